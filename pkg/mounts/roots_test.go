package mounts

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testfuse"
	"github.com/relinkd/relinkd/pkg/config"
)

// TestKnownRootsHungFilesystem: a mount whose FUSE server stops answering
// costs KnownRoots at most probeTimeout, leaves that mount out and is not
// looked at again while the first look is blocked; the other roots are
// still found. Once the server answers, it is looked at again.
func TestKnownRootsHungFilesystem(t *testing.T) {
	testfs.RequireRoot(t)
	good := testfs.Mount(t, "tmpfs", 4)
	if err := os.Mkdir(filepath.Join(good, ".relinkd"), 0o700); err != nil {
		t.Fatal(err)
	}
	hung := filepath.Join(t.TempDir(), "fuse")
	mustMkdir(t, hung)
	srv := testfuse.Mount(t, hung)
	srv.Hang(testfuse.OpLookup)
	p := New(&testConfig().Rescue, zaptest.NewLogger(t))
	for i := range 2 {
		start := time.Now()
		roots, err := p.KnownRoots()
		if err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > probeTimeout+time.Second {
			t.Errorf("call %d took %v with a hung mount, want at most %v", i, took, probeTimeout)
		}
		if !slices.Contains(roots, filepath.Join(good, ".relinkd")) {
			t.Errorf("call %d: %v lacks the root on the working mount", i, roots)
		}
		if n := srv.Pending(); n != 1 {
			t.Errorf("call %d: %d lookups held, want the first one only", i, n)
		}
	}
	// Concurrent callers share the blocked look too.
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if _, err := p.KnownRoots(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := srv.Pending(); n != 1 {
		t.Errorf("concurrent calls: %d lookups held, want the first one only", n)
	}
	srv.Resume()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.probes.mu.Lock()
		n := len(p.probes.inflight)
		p.probes.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d looks still in flight after the server answered", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	srv.Hang(testfuse.OpLookup)
	if _, err := p.KnownRoots(); err != nil {
		t.Fatal(err)
	}
	if n := srv.Pending(); n != 1 {
		t.Errorf("after the server answered: %d lookups held, want a new one", n)
	}
}

// TestKnownRootsSafeFSDir: the configured directories, then the fs_dir root of
// every mount that has a safe one, on that very mount.
func TestKnownRootsSafeFSDir(t *testing.T) {
	testfs.RequireRoot(t)
	good, planted, other := testfs.Mount(t, "tmpfs", 4), testfs.Mount(t, "tmpfs", 4), testfs.Mount(t, "tmpfs", 4)
	if err := os.Mkdir(filepath.Join(good, ".relinkd"), 0o700); err != nil {
		t.Fatal(err)
	}
	// A symlink in place of fs_dir, and one writable by others: not roots.
	if err := os.Symlink(good, filepath.Join(planted, ".relinkd")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(other, ".relinkd"), 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(other, ".relinkd"), 0o777); err != nil {
		t.Fatal(err)
	}
	cfg := config.Defaults()
	cfg.Rescue.Dirs = []string{"/nonexistent/relinkd-test-dir"}
	roots, err := New(&cfg.Rescue, zaptest.NewLogger(t)).KnownRoots()
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) == 0 || roots[0] != cfg.Rescue.Dirs[0] {
		t.Errorf("roots %q do not start with the configured directory", roots)
	}
	if !slices.Contains(roots, filepath.Join(good, ".relinkd")) {
		t.Errorf("roots %q lack %s/.relinkd", roots, good)
	}
	for _, r := range roots {
		if strings.HasPrefix(r, planted) || strings.HasPrefix(r, other) {
			t.Errorf("unsafe root %s listed", r)
		}
	}
}
