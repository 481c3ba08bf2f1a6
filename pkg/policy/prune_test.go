package policy

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/layout"
)

func ctime(t *testing.T, path string) time.Time {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
}

// newerThan changes path's ctime (chmod) until it is after prev: ctime
// ticks with the kernel's coarse clock, so two files written back to back
// often share one.
func newerThan(t *testing.T, path string, prev time.Time) time.Time {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := os.Chmod(path, 0o600); err != nil {
			t.Fatal(err)
		}
		if c := ctime(t, path); c.After(prev) {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("ctime of %s does not advance", path)
		}
	}
}

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

// rescueTree creates three rescued files with sidecars, oldest first,
// with strictly increasing ctimes, and returns those ctimes.
func rescueTree(t *testing.T, root string) []time.Time {
	t.Helper()
	var times []time.Time
	prev := time.Time{}
	for i, rel := range []string{"var/log/a.log.1", "var/log/b.log.2", "srv/c.3"} {
		p := filepath.Join(root, rel)
		mustMkdir(t, filepath.Dir(p))
		writeFile(t, p, strings.Repeat("x", (i+1)*1000))
		writeFile(t, p+SidecarSuffix, "{}\n")
		newerThan(t, p+SidecarSuffix, prev)
		prev = newerThan(t, p, ctime(t, p+SidecarSuffix))
		times = append(times, prev)
	}
	return times
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
			want:    []string{"srv/c.3", "srv/c.3" + SidecarSuffix},
			removed: 2,
		},
		{
			name:     "by total size, oldest first",
			maxTotal: 5100, // 1000+2000+3000 + 3×3 sidecar bytes: a must go, then b fits
			want:     []string{"srv/c.3", "srv/c.3" + SidecarSuffix, "var/log/b.log.2", "var/log/b.log.2" + SidecarSuffix},
			removed:  1,
		},
		{
			name:     "nothing to do",
			maxTotal: 1 << 20,
			want: []string{"srv/c.3", "srv/c.3" + SidecarSuffix, "var/log/a.log.1", "var/log/a.log.1" + SidecarSuffix,
				"var/log/b.log.2", "var/log/b.log.2" + SidecarSuffix},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "rescued")
			times := rescueTree(t, root)
			age, now := time.Duration(0), time.Now()
			if tt.maxAge != nil {
				age, now = tt.maxAge(times)
			}
			res, err := Prune(root, age, tt.maxTotal, now)
			if err != nil {
				t.Fatal(err)
			}
			if got := files(t, root); !slices.Equal(got, tt.want) {
				t.Errorf("-want %q\n+got  %q", tt.want, got)
			}
			if res.Removed != tt.removed {
				t.Errorf("Removed %d, want %d", res.Removed, tt.removed)
			}
			used, err := DiskUsage(root)
			if err != nil || used != res.Kept {
				t.Errorf("Kept %d, DiskUsage %d %v", res.Kept, used, err)
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
	times := rescueTree(t, root)
	if _, err := Prune(root, time.Minute, 0, times[2].Add(time.Hour)); err != nil {
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
	if _, err := Prune(root, time.Second, 1, future); err != nil {
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
	if _, err := Prune(link, time.Second, 1, future); !errors.Is(err, unix.ELOOP) && !errors.Is(err, unix.ENOTDIR) {
		t.Errorf("symlinked root: err %v, want ELOOP", err)
	}
	if _, err := os.Stat(outside + "/victim"); err != nil {
		t.Errorf("victim removed through a symlinked root: %v", err)
	}
	// A missing root is nothing to prune.
	if res, err := Prune(filepath.Join(base, "none"), time.Second, 1, future); err != nil || res.Removed != 0 {
		t.Errorf("missing root: %+v %v", res, err)
	}
}

func TestPolicyPruneRefreshesUsage(t *testing.T) {
	root := t.TempDir()
	rescueTree(t, root)
	cfg := testConfig(root)
	cfg.Rescue.MaxTotalSize = 3100
	cfg.Rescue.Retention = 0
	p := New(cfg, zaptest.NewLogger(t))
	res, err := p.Prune(root)
	if err != nil {
		t.Fatal(err)
	}
	if res.Removed != 2 || res.Kept > 3100 {
		t.Errorf("%+v", res)
	}
	if got := p.Roots(); !slices.Equal(got, []string{root}) {
		t.Errorf("Roots %v", got)
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
	now := newerThan(t, fresh, ctime(t, stale)).Add(staleTemp)
	res, err := Prune(root, 0, 0, now)
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
