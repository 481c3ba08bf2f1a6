package policy

import (
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

// The prune itself is tested in retention; the helpers below are its
// tests' (rescueTree: three rescued files, oldest first).

func TestPolicyPruneRefreshesUsage(t *testing.T) {
	root := t.TempDir()
	rescueTree(t, root)
	cfg := testConfig(root)
	cfg.Rescue.MaxTotalSize = 3100
	cfg.Rescue.Retention = 0
	cfg.Rescue.FSDir = "" // else Roots lists the fs_dir roots of the host's mounts too (TestKnownRoots)
	p := New(cfg, zaptest.NewLogger(t))
	res, err := p.Prune(root)
	if err != nil {
		t.Fatal(err)
	}
	if res.Removed != 2 || res.Kept > 3100 {
		t.Errorf("%+v", res)
	}
	// Every configured root, the container root too, and nothing else.
	if got := p.Roots(); !slices.Equal(got, []string{root, cfg.Rescue.ContainerDir}) {
		t.Errorf("Roots %v", got)
	}
}

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

// Rescued files named as the engine names them (layout.Suffix); b took
// ".1" because its first name was taken.
const (
	relA = "var/log/a.log.20261121T203000Z.pid1.fd3"
	relB = "var/log/b.log.20261121T203000Z.pid2.fd3.1"
	relC = "srv/c.20261121T203000Z.pid3.fd3"
)

// rescueTree creates three rescued files with sidecars, oldest first,
// with strictly increasing ctimes, and returns those ctimes.
func rescueTree(t *testing.T, root string) []time.Time {
	t.Helper()
	var times []time.Time
	prev := time.Time{}
	for i, rel := range []string{relA, relB, relC} {
		p := filepath.Join(root, rel)
		mustMkdir(t, filepath.Dir(p))
		writeFile(t, p, strings.Repeat("x", (i+1)*1000))
		writeFile(t, p+layout.SidecarSuffix, "{}\n")
		newerThan(t, p+layout.SidecarSuffix, prev)
		prev = newerThan(t, p, ctime(t, p+layout.SidecarSuffix))
		times = append(times, prev)
	}
	return times
}
