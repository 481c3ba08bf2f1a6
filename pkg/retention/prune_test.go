package retention

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/layout"
	"github.com/relinkd/relinkd/internal/testlayout"
)

// files lists the regular files under root, relative, sorted.
func files(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func TestPrune(t *testing.T) {
	tests := []struct {
		name     string
		maxAge   func(times []time.Time) (time.Duration, time.Time)
		maxTotal uint64
		want     []string
		removed  int
	}{
		{
			name: "by age",
			maxAge: func(ts []time.Time) (time.Duration, time.Time) {
				// Now is one hour after b: a and b are over the age limit.
				return time.Hour, ts[1].Add(time.Hour + time.Nanosecond)
			},
			want:    []string{testlayout.RelC, testlayout.RelC + layout.SidecarSuffix},
			removed: 2,
		},
		{
			name:     "by total size, oldest first",
			maxTotal: 5100, // 1000+2000+3000 + 3×3 sidecar bytes: a must go, then b fits
			want:     []string{testlayout.RelC, testlayout.RelC + layout.SidecarSuffix, testlayout.RelB, testlayout.RelB + layout.SidecarSuffix},
			removed:  1,
		},
		{
			name:     "nothing to do",
			maxTotal: 1 << 20,
			want:     []string{testlayout.RelC, testlayout.RelC + layout.SidecarSuffix, testlayout.RelA, testlayout.RelA + layout.SidecarSuffix, testlayout.RelB, testlayout.RelB + layout.SidecarSuffix},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "rescued")
			times := testlayout.RescueTree(t, root)
			age, now := time.Duration(0), time.Now()
			if tt.maxAge != nil {
				age, now = tt.maxAge(times)
			}
			res, err := Prune(root, age, tt.maxTotal, 0, now)
			if err != nil {
				t.Fatal(err)
			}
			if got := files(t, root); !slices.Equal(got, tt.want) {
				t.Errorf("-want %q\n+got  %q", tt.want, got)
			}
			if res.Removed != tt.removed {
				t.Errorf("Removed %d, want %d", res.Removed, tt.removed)
			}
			used, _, err := Usage(root)
			if err != nil || used != res.Kept {
				t.Errorf("Kept %d, Usage %d %v", res.Kept, used, err)
			}
			if tt.maxTotal > 0 && res.Kept > tt.maxTotal {
				t.Errorf("Kept %d over %d", res.Kept, tt.maxTotal)
			}
			if _, err := os.Stat(root); err != nil {
				t.Errorf("root removed: %v", err)
			}
		})
	}
}

func TestPruneRemovesEmptyDirs(t *testing.T) {
	root := t.TempDir()
	times := testlayout.RescueTree(t, root)
	if _, err := Prune(root, time.Minute, 0, 0, times[2].Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(root)
	if len(ents) != 0 {
		t.Errorf("left %v in root", ents)
	}
}

// TestPruneNeverLeavesRoot plants symlinks to an outside tree: nothing
// outside is removed, and a root that is itself a symlink is refused.
func TestPruneNeverLeavesRoot(t *testing.T) {
	base := t.TempDir()
	root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	mustMkdir(t, root, outside+"/sub")
	writeFile(t, outside+"/victim", "precious")
	writeFile(t, outside+"/sub/victim2", "precious")
	if err := os.Symlink(outside, root+"/dirlink"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside+"/victim", root+"/filelink"); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(1000 * time.Hour)
	if _, err := Prune(root, time.Second, 1, 0, future); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{outside + "/victim", outside + "/sub/victim2", root + "/dirlink", root + "/filelink"} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	link := filepath.Join(base, "rootlink")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Prune(link, time.Second, 1, 0, future); !errors.Is(err, unix.ELOOP) && !errors.Is(err, unix.ENOTDIR) {
		t.Errorf("symlinked root: err %v, want ELOOP", err)
	}
	if _, err := os.Stat(outside + "/victim"); err != nil {
		t.Errorf("victim removed through a symlinked root: %v", err)
	}
	// A missing root is nothing to prune.
	if res, err := Prune(filepath.Join(base, "none"), time.Second, 1, 0, future); err != nil || res.Removed != 0 {
		t.Errorf("missing root: %+v %v", res, err)
	}
}

// TestPruneStaleTemps: an engine temporary that a crash left behind is
// removed once it has not changed for staleTemp; a younger one (a copy in
// progress) and rescued files are left alone.
func TestPruneStaleTemps(t *testing.T) {
	root := filepath.Join(t.TempDir(), "rescued")
	mustMkdir(t, filepath.Join(root, "var/log"))
	stale := filepath.Join(root, "var/log/.app.log"+layout.TempMarker+"0a0b0c0d0e0f")
	fresh := filepath.Join(root, "var/log/.other.log"+layout.TempMarker+"010203040506")
	kept := filepath.Join(root, "var/log/app.log.20261121T203000Z.pid1.fd3")
	writeFile(t, stale, "half")
	writeFile(t, kept, "whole")
	writeFile(t, fresh, "in progress")
	// fresh changed strictly after stale; at now, fresh is exactly
	// staleTemp old (kept) and stale is older than that (removed).
	now := testlayout.NewerThan(t, fresh, testlayout.Ctime(t, stale)).Add(staleTemp)
	res, err := Prune(root, 0, 0, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	if res.StaleTemps != 1 || res.Removed != 0 {
		t.Errorf("StaleTemps %d, Removed %d; want 1, 0", res.StaleTemps, res.Removed)
	}
	want := []string{"var/log/" + filepath.Base(fresh), "var/log/" + filepath.Base(kept)}
	slices.Sort(want)
	if got := files(t, root); !slices.Equal(got, want) {
		t.Errorf("-want %q\n+got  %q", want, got)
	}
}

// TestPruneLeavesForeignFiles: a rescue root may be a directory that also
// holds other files (rescue.dirs: [/srv/backup]). Only names the engine
// writes are pruned or counted; everything else survives, however old.
func TestPruneLeavesForeignFiles(t *testing.T) {
	foreign := []string{
		"important.db",
		"var/log/notes.txt" + layout.SidecarSuffix, // named like a sidecar, but not of a rescued name
		"var/log/app.log.1",                        // a rotated log, not a rescued name
		"var/log/.x" + layout.TempMarker + "zz",
		"srv/c.20261121T203000Z.pid3.fd3.bak",
	}
	tests := []struct {
		name     string
		maxAge   time.Duration
		maxTotal uint64
		removed  int
		want     []string // besides the foreign files
	}{
		{name: "by age", maxAge: time.Hour, removed: 3},
		// The foreign files are far bigger than the limit; the rescued
		// files alone fit, so nothing is removed.
		{name: "by total size", maxTotal: 6009, want: []string{testlayout.RelA, testlayout.RelA + layout.SidecarSuffix, testlayout.RelB, testlayout.RelB + layout.SidecarSuffix, testlayout.RelC, testlayout.RelC + layout.SidecarSuffix}},
		{name: "by total size, over", maxTotal: 6008, removed: 1, want: []string{testlayout.RelB, testlayout.RelB + layout.SidecarSuffix, testlayout.RelC, testlayout.RelC + layout.SidecarSuffix}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "backup")
			mustMkdir(t, root)
			writeFile(t, filepath.Join(root, "important.db"), strings.Repeat("d", 100_000))
			times := testlayout.RescueTree(t, root)
			for _, rel := range foreign[1:] {
				writeFile(t, filepath.Join(root, rel), strings.Repeat("f", 10_000))
			}
			res, err := Prune(root, tt.maxAge, tt.maxTotal, 0, times[2].Add(1000*time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			want := append(slices.Clone(foreign), tt.want...)
			slices.Sort(want)
			if got := files(t, root); !slices.Equal(got, want) {
				t.Errorf("-want %q\n+got  %q", want, got)
			}
			if res.Removed != tt.removed {
				t.Errorf("Removed %d, want %d", res.Removed, tt.removed)
			}
			used, _, err := Usage(root)
			if err != nil || used != res.Kept {
				t.Errorf("Kept %d, Usage %d %v", res.Kept, used, err)
			}
			var rescuedBytes uint64
			for _, rel := range tt.want {
				st, err := os.Stat(filepath.Join(root, rel))
				if err != nil {
					t.Fatal(err)
				}
				rescuedBytes += uint64(st.Size())
			}
			if res.Kept != rescuedBytes {
				t.Errorf("Kept %d, want %d (foreign files are not counted)", res.Kept, rescuedBytes)
			}
		})
	}
}

// TestPruneMarkerInRescuedName: a rescued file whose original name holds
// the temporary marker is a rescued file, kept until retention, not crash
// debris removed after staleTemp.
func TestPruneMarkerInRescuedName(t *testing.T) {
	root := filepath.Join(t.TempDir(), "rescued")
	mustMkdir(t, filepath.Join(root, "home/u"))
	kept := filepath.Join(root, "home/u/.cache"+layout.TempMarker+"x.20261121T203000Z.pid123.fd4")
	stale := filepath.Join(root, "home/u/.cache"+layout.TempMarker+"0a0b0c0d0e0f")
	writeFile(t, kept, "rescued")
	writeFile(t, stale, "half")
	now := testlayout.NewerThan(t, stale, testlayout.Ctime(t, kept)).Add(staleTemp + time.Minute)
	res, err := Prune(root, 7*24*time.Hour, 0, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	if res.StaleTemps != 1 || res.Removed != 0 {
		t.Errorf("StaleTemps %d, Removed %d; want 1, 0", res.StaleTemps, res.Removed)
	}
	if got, want := files(t, root), []string{"home/u/" + filepath.Base(kept)}; !slices.Equal(got, want) {
		t.Errorf("-want %q\n+got  %q", want, got)
	}
}

// openTmpfile opens an unnamed file in dir, as the engine does for a
// rescue in progress.
func openTmpfile(t *testing.T, dir string) int {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) {
		t.Skipf("no O_TMPFILE on %s: %v", dir, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// linkTmpfile gives the unnamed file fd the name path, as the engine's
// final step does (linkat(2) through /proc/self/fd).
func linkTmpfile(fd int, path string) error {
	return unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), unix.AT_FDCWD, path, unix.AT_SYMLINK_FOLLOW)
}

func age(t *testing.T, path string, d time.Duration) {
	t.Helper()
	old := time.Now().Add(-d)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
}

// TestPruneEmptyDirs: a directory a rescue in progress has just created,
// or the prune has just emptied, stays (its O_TMPFILE file makes it look
// empty, and the rescue must still be able to link it there); an empty
// directory the engine left long ago goes; an empty directory that is not
// the engine's (not 0700, not emptied by the prune) stays.
func TestPruneEmptyDirs(t *testing.T) {
	root := filepath.Join(t.TempDir(), "rescued")
	mkdir := func(rel string, perm os.FileMode) string {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.Mkdir(p, perm); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, perm); err != nil { // whatever the umask
			t.Fatal(err)
		}
		return p
	}
	mustMkdir(t, root)
	mkdir("var", 0o700)
	logDir := mkdir("var/log", 0o700)
	writeFile(t, filepath.Join(root, testlayout.RelA), "rescued")
	writeFile(t, filepath.Join(root, testlayout.RelA)+layout.SidecarSuffix, "{}\n")
	inLog := openTmpfile(t, logDir) // a second rescue of the same path, in progress
	mkdir("srv", 0o700)
	newDir := mkdir("srv/new", 0o700)
	inNew := openTmpfile(t, newDir) // a rescue in progress into a directory it just made
	age(t, mkdir("leftover", 0o700), 2*staleTemp)
	age(t, mkdir("leftover/sub", 0o700), 2*staleTemp)
	age(t, filepath.Join(root, "leftover"), 2*staleTemp) // mkdir of sub touched it
	age(t, mkdir("mnt", 0o755), 2*staleTemp)

	// maxTotal 1 removes every rescued file, however young.
	res, err := Prune(root, 0, 1, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if res.Removed != 1 {
		t.Errorf("Removed %d, want 1", res.Removed)
	}
	for _, rel := range []string{"var/log", "srv/new", "mnt"} {
		if _, err := os.Lstat(filepath.Join(root, rel)); err != nil {
			t.Errorf("%s removed: %v", rel, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(root, "leftover")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leftover: %v, want it removed", err)
	}
	for fd, path := range map[int]string{inLog: filepath.Join(root, testlayout.RelB), inNew: filepath.Join(newDir, "x.20261121T203000Z.pid1.fd3")} {
		if err := linkTmpfile(fd, path); err != nil {
			t.Errorf("rescue in progress cannot publish: %v", err)
		}
	}
}
