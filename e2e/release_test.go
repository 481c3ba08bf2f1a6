package e2e

import (
	"bufio"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testfs"
)

// releaseVersion is the version the release tests build.
const releaseVersion = "1.0.0"

// release is one `make deb` (which runs `make release`) into a directory of
// its own.
type release struct {
	dist string // DIST
	bin  string // the static binary in the tarball's directory
	deb  string // the package
}

// builtReleases are the releases built so far in this run, by version:
// the container test and the package test share them.
var builtReleases = struct {
	sync.Mutex
	m map[string]release
}{m: map[string]release{}}

// buildRelease runs `make deb VERSION=version DIST=dir` in the
// repository (once per version in a run; dir is made here) and returns
// what it made.
func buildRelease(t *testing.T, version string) release {
	t.Helper()
	builtReleases.Lock()
	defer builtReleases.Unlock()
	if r, ok := builtReleases.m[version]; ok {
		return r
	}
	dist, err := os.MkdirTemp(filepath.Dir(binary), "dist-"+version+"-")
	if err != nil {
		t.Fatal(err)
	}
	r := makeRelease(t, version, dist)
	builtReleases.m[version] = r
	return r
}

// makeRelease runs `make deb` for version into dist.
func makeRelease(t *testing.T, version, dist string) release {
	t.Helper()
	testfs.RequireTool(t, "make", "tar", "gzip", "sha256sum")
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := makeCmd(ctx, repo, "deb", "VERSION="+version, "DIST="+dist).CombinedOutput()
	if err != nil {
		t.Fatalf("make deb VERSION=%s DIST=%s: %v\n%s", version, dist, err, out)
	}
	t.Logf("make deb VERSION=%s took %v", version, time.Since(start).Round(time.Millisecond))
	return release{
		dist: dist,
		bin:  filepath.Join(dist, "relinkd-"+version+"-linux-"+goarch(t), "relinkd"),
		deb:  filepath.Join(dist, "relinkd_"+version+"_"+goarch(t)+".deb"),
	}
}

func goarch(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOARCH").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// TestRelease: `make release` (through `make deb`) gives a static binary
// stamped with its version, a tarball with the binary, the unit, the
// example configuration and the README, and SHA256SUMS that match; two
// builds in two directories are the same bytes (binary, tarball and
// package); the package's unit is the shipped one with only ExecStart's
// path changed; lintian finds no error, and only the warnings the README
// lists.
func TestRelease(t *testing.T) {
	testfs.RequireTool(t, "lintian", "dpkg-deb")
	a := buildRelease(t, releaseVersion)
	dist2 := t.TempDir()
	b := makeRelease(t, releaseVersion, dist2)

	t.Run("Static", func(t *testing.T) {
		f, err := elf.Open(a.bin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("%s has a %v program header: not static", a.bin, p.Type)
			}
		}
		if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
			t.Errorf("%s needs %v", a.bin, libs)
		}
		out, err := exec.Command(a.bin, "version").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "relinkd "+releaseVersion+" (commit ") {
			t.Errorf("relinkd version: %v: %q, want the stamped version %s", err, out, releaseVersion)
		}
	})

	t.Run("Reproducible", func(t *testing.T) {
		sa, sb := readFile(t, filepath.Join(a.dist, "SHA256SUMS")), readFile(t, filepath.Join(b.dist, "SHA256SUMS"))
		if sa != sb {
			t.Errorf("two builds differ:\n%s\n%s", sa, sb)
		}
		for _, rel := range []string{
			"relinkd-" + releaseVersion + "-linux-" + goarch(t) + ".tar.gz",
			filepath.Base(a.deb),
		} {
			if sha(t, filepath.Join(a.dist, rel)) != sha(t, filepath.Join(b.dist, rel)) {
				t.Errorf("%s differs between two builds", rel)
			}
		}
	})

	t.Run("Sums", func(t *testing.T) {
		cmd := exec.Command("sha256sum", "--check", "--strict", "SHA256SUMS")
		cmd.Dir = a.dist
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("sha256sum --check: %v\n%s", err, out)
		}
		sums := readFile(t, filepath.Join(a.dist, "SHA256SUMS"))
		for _, want := range []string{".tar.gz", "/relinkd", ".deb"} {
			if !strings.Contains(sums, want+"\n") {
				t.Errorf("SHA256SUMS has no line for *%s:\n%s", want, sums)
			}
		}
	})

	t.Run("Tarball", func(t *testing.T) {
		name := "relinkd-" + releaseVersion + "-linux-" + goarch(t)
		out, err := exec.Command("tar", "-tvzf", filepath.Join(a.dist, name+".tar.gz")).CombinedOutput()
		if err != nil {
			t.Fatalf("tar: %v\n%s", err, out)
		}
		var names []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(line)
			if f[1] != "0/0" {
				t.Errorf("entry not owned by root: %s", line)
			}
			names = append(names, f[len(f)-1])
		}
		want := []string{name + "/", name + "/README.md", name + "/relinkd", name + "/relinkd.service", name + "/relinkd.yaml"}
		if _, err := os.Stat("../LICENSE"); err == nil {
			want = append(want, name+"/LICENSE")
		}
		slices.Sort(want)
		if !slices.Equal(names, want) {
			t.Errorf("tarball holds %v, want %v", names, want)
		}
	})

	t.Run("Contents", func(t *testing.T) {
		out, err := exec.Command("dpkg-deb", "--contents", a.deb).CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg-deb --contents: %v\n%s", err, out)
		}
		for _, want := range []string{"./usr/bin/relinkd", "./lib/systemd/system/relinkd.service", "./etc/relinkd/relinkd.yaml", "./usr/share/doc/relinkd/copyright",
			"./usr/share/doc/relinkd/examples/relinkd-bpf.conf"} {
			if !strings.Contains(string(out), " "+want+"\n") {
				t.Errorf("package lacks %s:\n%s", want, out)
			}
		}
		ctl := t.TempDir()
		if out, err := exec.Command("dpkg-deb", "--control", a.deb, ctl).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb --control: %v\n%s", err, out)
		}
		if got := strings.TrimSpace(readFile(t, filepath.Join(ctl, "conffiles"))); got != "/etc/relinkd/relinkd.yaml" {
			t.Errorf("conffiles %q, want /etc/relinkd/relinkd.yaml", got)
		}
		// The unit is the shipped one but for ExecStart's path.
		x := t.TempDir()
		if out, err := exec.Command("dpkg-deb", "--extract", a.deb, x).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb --extract: %v\n%s", err, out)
		}
		got := strings.Split(readFile(t, filepath.Join(x, "lib/systemd/system/relinkd.service")), "\n")
		want := strings.Split(readFile(t, "../deploy/systemd/relinkd.service"), "\n")
		if len(got) != len(want) {
			t.Fatalf("packaged unit has %d lines, the shipped one %d", len(got), len(want))
		}
		changed := 0
		for i := range want {
			if got[i] == want[i] {
				continue
			}
			changed++
			if !strings.HasPrefix(want[i], "ExecStart=/usr/local/bin/relinkd ") ||
				got[i] != strings.Replace(want[i], "/usr/local/bin/relinkd", "/usr/bin/relinkd", 1) {
				t.Errorf("packaged unit line %d: %q, shipped %q", i+1, got[i], want[i])
			}
		}
		if changed != 1 {
			t.Errorf("packaged unit differs from the shipped one in %d lines, want 1 (ExecStart)", changed)
		}
		if sha(t, filepath.Join(x, "etc/relinkd/relinkd.yaml")) != sha(t, "../configs/relinkd.yaml") {
			t.Errorf("packaged relinkd.yaml is not configs/relinkd.yaml")
		}
	})

	t.Run("Lintian", func(t *testing.T) {
		out, _ := exec.Command("lintian", "--tag-display-limit", "0", a.deb).CombinedOutput()
		var tags []string
		sc := bufio.NewScanner(strings.NewReader(string(out)))
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "E: ") {
				t.Errorf("lintian error: %s", line)
			}
			if strings.HasPrefix(line, "W: ") {
				f := strings.Fields(line)
				tags = append(tags, f[2])
			}
		}
		// The README's "Debian package" section lists these, with why.
		if want := []string{"no-manual-page"}; !slices.Equal(tags, want) {
			t.Errorf("lintian warnings %v, want %v (update the README's list)\n%s", tags, want, out)
		}
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
