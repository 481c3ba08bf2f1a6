package policy

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/relinkd/relinkd/internal/layout"
	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testfuse"
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
	roots, err := p.KnownRoots()
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
	if roots, err := p.KnownRoots(); err != nil || !slices.Equal(roots, []string{conf}) {
		t.Errorf("without fs_dir: want only %s, got %v (%v)", conf, roots, err)
	}
}

// TestSidecars: every sidecar under a root is handed over with the
// rescued file beside it; a sidecar without its file, a too large one and
// one that is a symlink come with an error, and a symlinked directory is
// not entered.
func TestSidecars(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "root")
	name := "app.log.20261121T203000Z.pid1.fd3"
	mustMkdir(t, filepath.Join(root, "var/log"), filepath.Join(base, "elsewhere"))
	writeFile(t, filepath.Join(root, "var/log", name), "data")
	writeFile(t, filepath.Join(root, "var/log", name+SidecarSuffix), `{"ok":1}`)
	orphan := "gone.20261121T203000Z.pid1.fd4"
	writeFile(t, filepath.Join(root, orphan+SidecarSuffix), `{}`)
	big := "big.20261121T203000Z.pid1.fd5"
	writeFile(t, filepath.Join(root, big), "x")
	writeFile(t, filepath.Join(root, big+SidecarSuffix), strings.Repeat(" ", layout.MaxSidecarSize+1))
	link := "link.20261121T203000Z.pid1.fd6"
	writeFile(t, filepath.Join(root, link), "x")
	writeFile(t, filepath.Join(base, "elsewhere", "target"), `{"planted":1}`)
	if err := os.Symlink(filepath.Join(base, "elsewhere", "target"), filepath.Join(root, link+SidecarSuffix)); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(base, "elsewhere", name), "data")
	writeFile(t, filepath.Join(base, "elsewhere", name+SidecarSuffix), `{"planted":2}`)
	if err := os.Symlink(filepath.Join(base, "elsewhere"), filepath.Join(root, "var/planted")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "notes.relinkd.json"), `{}`) // not a name relinkd writes

	p := New(testConfig(root), zaptest.NewLogger(t))
	got := map[string]SidecarFile{}
	if err := p.Sidecars(root, func(f SidecarFile) { got[f.Rel] = f }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Errorf("want 3 sidecars (the link one is no regular file), got %d: %v", len(got), got)
	}
	f := got["var/log/"+name]
	var st os.FileInfo
	st, err := os.Lstat(filepath.Join(root, "var/log", name))
	if err != nil {
		t.Fatal(err)
	}
	if f.Err != nil || string(f.Data) != `{"ok":1}` || f.Size != 4 || f.Root != root || f.Ino == 0 || f.Size != st.Size() {
		t.Errorf("good sidecar: %+v", f)
	}
	for _, rel := range []string{orphan, big} {
		if f := got[rel]; !errors.Is(f.Err, ErrSidecarFile) || f.Data != nil {
			t.Errorf("%s: want ErrSidecarFile and no data, got %+v", rel, f)
		}
	}
	if err := p.Sidecars(filepath.Join(base, "missing"), func(SidecarFile) { t.Error("called for a missing root") }); err != nil {
		t.Errorf("missing root: %v", err)
	}
}

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
	p := New(testConfig(), zaptest.NewLogger(t))
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
