package policy

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testfuse"
)

// TestMeasureOutsideLock: a rescue root whose walk hangs (a FUSE server
// that stops answering directory reads) holds up only the decisions that
// need that root's size. Decisions for another root, Release and Roots go
// on meanwhile, and the hung root's size is measured once when it answers
// again, with what was granted meanwhile added.
func TestMeasureOutsideLock(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 16)
	good := filepath.Join(mnt, "rescue")
	hung := filepath.Join(t.TempDir(), "fuse")
	if err := os.Mkdir(hung, 0o700); err != nil {
		t.Fatal(err)
	}
	srv := testfuse.Mount(t, hung)

	c := candidate(t, holdDeleted(t, filepath.Join(mnt, "data/y.log"), 4096), 0)
	cfg := testConfig(good)
	cfg.Rescue.MaxTotalSize = 8 << 20
	p := New(cfg, zaptest.NewLogger(t))

	srv.Hang(testfuse.OpOpendir, testfuse.OpReaddir, testfuse.OpReaddirplus, testfuse.OpLookup, testfuse.OpGetattr)
	measured := make(chan struct{})
	go func() {
		p.measure(hung)
		close(measured)
	}()
	srv.WaitPending(t, 1)

	done := make(chan Decision, 1)
	go func() { done <- p.Decide(c) }()
	select {
	case d := <-done:
		if d.Action != Rescue {
			t.Fatalf("decision for the answering root: %v %s, want rescue", d.Action, d.Detail)
		}
		p.Release(c, d)
	case <-time.After(10 * time.Second):
		t.Fatal("a decision for another root waited for the hung root's walk")
	}
	if roots := p.Roots(); len(roots) == 0 {
		t.Error("Roots listed nothing")
	}
	select {
	case <-measured:
		t.Fatal("the walk of the hung root returned while its server held its requests")
	default:
	}
	srv.Resume()
	select {
	case <-measured:
	case <-time.After(10 * time.Second):
		t.Fatal("the walk did not finish after the server answered")
	}
	p.mu.Lock()
	u, walking := p.usage[hung], p.walks[hung]
	p.mu.Unlock()
	if u == nil || u.at.IsZero() || walking != nil {
		t.Errorf("after the walk: usage %+v, walk in progress %v", u, walking != nil)
	}
}
