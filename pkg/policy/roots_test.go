package policy

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/relinkd/relinkd/internal/testfs"
)

// TestKnownRoots: the fs_dir roots of the host's mounts are known without
// any rescue having chosen them (what a restarted daemon needs), once
// each, and only those that can be roots; Roots includes them, so
// retention covers them after a restart.
func TestKnownRoots(t *testing.T) {
	testfs.RequireRoot(t)
	good := testfs.Mount(t, "tmpfs", 4)
	symlinked := testfs.Mount(t, "tmpfs", 4)
	open := testfs.Mount(t, "tmpfs", 4)
	none := testfs.Mount(t, "tmpfs", 4)
	covered := testfs.Mount(t, "tmpfs", 4)
	bound := filepath.Join(t.TempDir(), "bound")
	mustMkdir(t, bound)
	if err := os.Mkdir(filepath.Join(good, ".relinkd"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(good+"/.relinkd", filepath.Join(symlinked, ".relinkd")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(open, ".relinkd"), 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(open, ".relinkd"), 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(covered, ".relinkd"), 0o700); err != nil {
		t.Fatal(err)
	}
	// Another filesystem mounted on covered/.relinkd: not covered's root.
	over := filepath.Join(covered, ".relinkd")
	run(t, "mount", "-t", "tmpfs", "tmpfs", over)
	t.Cleanup(func() { testfs.Unmount(t, over) })
	// good's root again through a bind mount: listed once.
	run(t, "mount", "--bind", good, bound)
	t.Cleanup(func() { testfs.Unmount(t, bound) })

	conf := filepath.Join(t.TempDir(), "rescued")
	p := New(testConfig(conf), zaptest.NewLogger(t))
	roots, err := p.Host().KnownRoots()
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) == 0 || roots[0] != conf {
		t.Fatalf("KnownRoots %v: want the configured directory first", roots)
	}
	mine := func(roots []string) []string {
		var out []string
		for _, r := range roots {
			for _, m := range []string{good, symlinked, open, none, covered, bound} {
				if strings.HasPrefix(r, m+"/") {
					out = append(out, r)
				}
			}
		}
		return out
	}
	want := []string{filepath.Join(good, ".relinkd")}
	if got := mine(roots); !slices.Equal(got, want) {
		t.Errorf("fs_dir roots of the test's mounts: want %v, got %v (all: %v)", want, got, roots)
	}
	if got := mine(p.Roots()); !slices.Equal(got, want) {
		t.Errorf("Roots: want %v among them, got %v", want, got)
	}

	p.cfg.Rescue.FSDir = ""
	if roots, err := p.Host().KnownRoots(); err != nil || !slices.Equal(roots, []string{conf}) {
		t.Errorf("without fs_dir: want only %s, got %v (%v)", conf, roots, err)
	}
}
