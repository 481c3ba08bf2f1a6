package policy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/events"
	"github.com/relinkd/relinkd/internal/layout"
	"github.com/relinkd/relinkd/internal/logging"
	"github.com/relinkd/relinkd/internal/testcontainer"
	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/mounts"
	"github.com/relinkd/relinkd/pkg/relink"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// These tests run the real pipeline on real processes: the scanner's
// candidate of a holder in a container (its own mount and PID namespaces,
// an overlay root, a runtime-named cgroup), the policy's decision, the
// engine's pin and rescue.

const containerData = "written in the container\n"

// containerCandidate starts a holder in ct that writes containerData to
// /var/log/app/x.log and deletes it (first linking it to keep, if not
// ""), and returns the sweep's candidate for it.
func containerCandidate(t *testing.T, ct *testcontainer.Container, keep string) (*testproc.Holder, scanner.Candidate) {
	t.Helper()
	if err := os.MkdirAll(ct.Path("/var/log/app"), 0o755); err != nil {
		t.Fatal(err)
	}
	steps := []testproc.Step{testproc.Open("/var/log/app/x.log", "w"), testproc.Write(0, containerData)}
	if keep != "" {
		steps = append(steps, testproc.Link("/var/log/app/x.log", keep))
	}
	steps = append(steps, testproc.Unlink("/var/log/app/x.log"))
	h := ct.Start(t, steps...)
	return h, sweepOne(t, h)
}

func sweepOne(t *testing.T, h *testproc.Holder) scanner.Candidate {
	t.Helper()
	res, err := scanner.New(scanner.Options{}, zaptest.NewLogger(t)).SweepPIDs(context.Background(), []int{h.PID})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Candidates {
		if c.FD == h.FDs[0] {
			return c
		}
	}
	t.Fatalf("no candidate for pid %d fd %d in %+v", h.PID, h.FDs[0], res.Candidates)
	return scanner.Candidate{}
}

// rescueAs pins c and rescues it as d says, logging JSON events into the
// returned buffer: "file rescued" as the rescue pipeline (pkg/pipeline)
// logs it, from the pinned file, through internal/events.
func rescueAs(t *testing.T, c scanner.Candidate, d Decision) (relink.Result, *bytes.Buffer, error) {
	t.Helper()
	var buf bytes.Buffer
	log, err := logging.New(&buf, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	var ms []relink.Method
	for _, m := range d.Methods {
		ms = append(ms, relink.Method(m))
	}
	eng := relink.New(relink.Options{Methods: ms, Sidecar: true, Hash: true}, log)
	pin, err := eng.Pin(c)
	if err != nil {
		t.Fatalf("pin: %v", err)
	}
	defer pin.Close()
	rs, err := eng.Rescue(context.Background(), pin, relink.Destination{
		Root: d.Root, Via: d.Via, Beneath: d.Beneath, Rel: d.Rel, MinFreeBytes: d.MinFreeBytes, Rule: d.Rule,
	})
	if err != nil {
		return relink.Result{}, &buf, err
	}
	res := rs.Result()
	pc := pin.Candidate()
	events.New(log).Rescued(&pc, res.Path, string(res.Method), res.Bytes, d.Rule, res.Duration)
	return res, &buf, nil
}

// event returns the first event with msg in buf.
func event(t *testing.T, buf *bytes.Buffer, msg string) map[string]any {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(buf.Bytes()))
	for sc.Scan() {
		var ev map[string]any
		if json.Unmarshal(sc.Bytes(), &ev) == nil && ev["msg"] == msg {
			return ev
		}
	}
	t.Fatalf("no %q event in:\n%s", msg, buf)
	return nil
}

// checkNamed fails unless m (an event or a sidecar) names c's namespace
// and container as ContainerField does.
func checkNamed(t *testing.T, what string, m map[string]any, c scanner.Candidate) {
	t.Helper()
	ns, _ := m["mntns"].(float64)
	id, _ := m["container_id"].(string)
	if c.MntNS == 0 || uint64(ns) != c.MntNS || id != c.ContainerID {
		t.Errorf("%s: mntns %v container_id %v, want %d %q", what, m["mntns"], m["container_id"], c.MntNS, c.ContainerID)
	}
}

func sha(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// checkNothingIn fails if anything but want exists below dir.
func checkNothingIn(t *testing.T, dir string, want ...string) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() && !strings.HasSuffix(p, "/relinkd-holder") {
			rel, _ := filepath.Rel(dir, p)
			for _, w := range want {
				if rel == w {
					return nil
				}
			}
			t.Errorf("unexpected %s", p)
		}
		return nil
	})
}

// By default a container's deleted file is rescued outside the container,
// into container_dir under the container's id and its own path, by copy
// (the overlay is another filesystem; cross_fs is off), the events and the
// sidecar naming the container; the container's layers get nothing.
func TestContainerFileRescuedOnHost(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  testcontainer.Options
	}{
		{"docker", testcontainer.Options{Cgroup: testcontainer.Docker}},
		{"nspawn", testcontainer.Options{Cgroup: testcontainer.Nspawn, Name: "web-1"}},
		{"no cgroup", testcontainer.Options{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ct := testcontainer.New(t, tc.opt)
			_, c := containerCandidate(t, ct, "")
			if !c.InContainer() || c.ContainerID != ct.ID {
				t.Fatalf("candidate %+v: not in container %q", c, ct.ID)
			}
			cfg := testConfig(t.TempDir())
			cfg.Rescue.ContainerDir = filepath.Join(t.TempDir(), "containers")
			p := New(cfg, zaptest.NewLogger(t))
			d := p.Decide(&c)
			name := ct.ID
			if name == "" {
				name = "mntns-" + uintStr(c.MntNS)
			}
			if d.Action != Rescue || d.Kind != mounts.KindContainer || d.Root != cfg.Rescue.ContainerDir || d.Beneath ||
				!strings.HasPrefix(d.Rel, name+"/var/log/app/x.log.") || strings.Join(d.Methods, ",") != "copy" {
				t.Fatalf("decision %+v: want a copy into %s under %s/var/log/app/x.log.SUFFIX", d, cfg.Rescue.ContainerDir, name)
			}
			res, buf, err := rescueAs(t, c, d)
			if err != nil {
				t.Fatalf("rescue: %v\n%s", err, buf)
			}
			want := filepath.Join(cfg.Rescue.ContainerDir, d.Rel)
			if res.Path != want || res.Method != relink.MethodCopy || sha(t, want) != sha256.Sum256([]byte(containerData)) {
				t.Errorf("rescued to %s by %s, want %s by copy, sha256 equal", res.Path, res.Method, want)
			}
			ev := event(t, buf, "file rescued")
			checkNamed(t, "file rescued", ev, c)
			if _, ok := ev["container_id"]; ok != (ct.ID != "") {
				t.Errorf("container_id present %v, want %v: %v", ok, ct.ID != "", ev)
			}
			var side map[string]any
			b, err := os.ReadFile(res.Sidecar)
			if err != nil || json.Unmarshal(b, &side) != nil {
				t.Fatalf("sidecar %s: %v", res.Sidecar, err)
			}
			checkNamed(t, "sidecar", side, c)
			checkNothingIn(t, ct.Upper, "var/log/app/.wh.x.log")
		})
	}
}

// A container's volume on the same filesystem as container_dir is
// rescued by reflink (XFS), outside the container all the same.
func TestContainerVolumeReflink(t *testing.T) {
	xfs := testfs.Mount(t, "xfs", 300)
	vol := filepath.Join(xfs, "volumes", "app")
	if err := os.MkdirAll(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	ct := testcontainer.New(t, testcontainer.Options{Cgroup: testcontainer.Docker,
		Volumes: []testcontainer.Volume{{Host: vol, Path: "/var/log/app"}}})
	_, c := containerCandidate(t, ct, "")
	cfg := testConfig(t.TempDir())
	cfg.Rescue.ContainerDir = filepath.Join(xfs, "containers")
	d := New(cfg, zaptest.NewLogger(t)).Decide(&c)
	if d.Action != Rescue || d.Kind != mounts.KindContainer || !d.SameFS || d.SameMount {
		t.Fatalf("decision %+v: want container_dir on the same filesystem, another mount", d)
	}
	res, buf, err := rescueAs(t, c, d)
	if err != nil || res.Method != relink.MethodReflink || sha(t, res.Path) != sha256.Sum256([]byte(containerData)) ||
		!strings.HasPrefix(res.Path, cfg.Rescue.ContainerDir+"/"+ct.ID+"/var/log/app/x.log.") {
		t.Fatalf("rescued to %s by %s (%v), want a reflink under %s/%s\n%s", res.Path, res.Method, err, cfg.Rescue.ContainerDir, ct.ID, buf)
	}
	checkNamed(t, "file rescued", event(t, buf, "file rescued"), c)
}

// With rescue.containers: inside the file goes into fs_dir at the root of
// the container's view of its mount, reached through the holder's own
// root: on the holder's vfsmount, so a linkable file is linked there.
func TestContainerInside(t *testing.T) {
	ct := testcontainer.New(t, testcontainer.Options{Cgroup: testcontainer.Docker})
	h, c := containerCandidate(t, ct, "/var/log/app/x.keep")
	if !c.Linkable {
		t.Fatalf("candidate %+v not linkable", c)
	}
	cfg := testConfig(t.TempDir())
	cfg.Rescue.Containers = config.ContainersInside
	d := New(cfg, zaptest.NewLogger(t)).Decide(&c)
	if d.Action != Rescue || d.Root != "/.relinkd" || d.Via != "/proc/"+uintStr(uint64(h.PID))+"/root" || !d.Beneath ||
		!d.SameMount || !strings.HasPrefix(d.Rel, "var/log/app/x.log.") {
		t.Fatalf("decision %+v: want /.relinkd beneath /proc/%d/root", d, h.PID)
	}
	res, buf, err := rescueAs(t, c, d)
	if err != nil {
		t.Fatalf("rescue: %v\n%s", err, buf)
	}
	if want := "/.relinkd/" + d.Rel; res.Path != want || res.Method != relink.MethodLink {
		t.Errorf("rescued to %s by %s, want %s by link", res.Path, res.Method, want)
	}
	var got, keep unix.Stat_t
	if err := unix.Stat(ct.Path(res.Path), &got); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(ct.Path("/var/log/app/x.keep"), &keep); err != nil {
		t.Fatal(err)
	}
	if got.Ino != keep.Ino || sha(t, ct.Path(res.Path)) != sha256.Sum256([]byte(containerData)) {
		t.Errorf("rescued file is inode %d, want %d (the same file), sha256 equal", got.Ino, keep.Ino)
	}
	// In the container's writable layer: it goes with the container.
	if _, err := os.Stat(filepath.Join(ct.Upper, res.Path)); err != nil {
		t.Errorf("not in the upper layer: %v", err)
	}
	checkNamed(t, "file rescued", event(t, buf, "file rescued"), c)
}

// A container cannot steer an inside rescue out of its root: a symlink it
// planted as the rescue root, or on the way to it, is refused, by the
// policy's first look and by the engine, and nothing is written where the
// symlink leads on the host.
func TestContainerInsideSymlink(t *testing.T) {
	ct := testcontainer.New(t, testcontainer.Options{Cgroup: testcontainer.Docker})
	h, c := containerCandidate(t, ct, "")
	victim := t.TempDir() // a host directory
	// The container plants /.relinkd → victim; resolved through
	// /proc/PID/root/.relinkd an absolute symlink leads to the host's victim.
	if err := os.Symlink(victim, ct.Path("/.relinkd")); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t.TempDir())
	cfg.Rescue.Containers = config.ContainersInside
	p := New(cfg, zaptest.NewLogger(t))
	if d := p.Decide(&c); d.Action != Skip || d.Reason != ReasonLocation || !strings.Contains(d.Detail, "not a directory") {
		t.Errorf("decision %+v: want a location skip, the root is a symlink", d)
	}
	// The engine refuses it itself, and a symlink further up (a parent
	// of the root) too: the policy's lstat would not see that one.
	if err := os.Symlink(victim, ct.Path("/data")); err != nil {
		t.Fatal(err)
	}
	via := "/proc/" + uintStr(uint64(h.PID)) + "/root"
	for _, root := range []string{"/.relinkd", "/data/.relinkd"} {
		d := Decision{Root: root, Via: via, Beneath: true, Rel: layout.RelName(&c, p.now()), Methods: []string{config.MethodCopy}}
		if _, buf, err := rescueAs(t, c, d); !errors.Is(err, relink.ErrUnsafePath) {
			t.Errorf("root %s: err %v, want ErrUnsafePath\n%s", root, err, buf)
		}
	}
	checkNothingIn(t, victim)
	if entries, _ := os.ReadDir(victim); len(entries) != 0 {
		t.Errorf("written through a planted symlink: %v", entries)
	}
}

// A holder with a mount namespace of its own but the host's root (a
// service that systemd sandboxes: PrivateTmp=, ProtectSystem=) is not a
// container: its paths are the host's, its file goes where a host file
// goes, and its events still carry mntns.
func TestSandboxedServiceNotContainer(t *testing.T) {
	testfs.RequireRoot(t)
	dir := t.TempDir()
	h := testproc.StartWith(t, testproc.Options{Unshare: true},
		testproc.Open(filepath.Join(dir, "s.log"), "w"), testproc.Write(0, containerData), testproc.Unlink(filepath.Join(dir, "s.log")))
	c := sweepOne(t, h)
	if c.MntNS == 0 || c.InContainer() {
		t.Fatalf("candidate %+v: want another mount namespace, not a container", c)
	}
	rescueDir := t.TempDir()
	d := New(testConfig(rescueDir), zaptest.NewLogger(t)).Decide(&c)
	if d.Action != Rescue || d.Kind != mounts.KindDir || d.Root != rescueDir || strings.HasPrefix(d.Rel, "mntns-") {
		t.Fatalf("decision %+v: want the rescue dir on the file's filesystem", d)
	}
	res, buf, err := rescueAs(t, c, d)
	if err != nil || sha(t, res.Path) != sha256.Sum256([]byte(containerData)) {
		t.Fatalf("rescue %v %v\n%s", res, err, buf)
	}
	checkNamed(t, "file rescued", event(t, buf, "file rescued"), c)
}

func uintStr(n uint64) string { return strconv.FormatUint(n, 10) }
