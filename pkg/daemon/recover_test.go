package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/scanner"
	"github.com/relinkd/relinkd/pkg/watch/watchtest"
)

func msg(m string) func(observer.LoggedEntry) bool {
	return func(e observer.LoggedEntry) bool { return e.Message == m }
}

// waitWatcher waits until Run has created its inotify instance (the
// first full sweep, which logs, comes after).
func waitWatcher(h *harness) {
	h.t.Helper()
	h.waitFor("the watcher", func() bool { return h.d.trees.watcher() != nil })
}

// TestOverflow: with a 4-event inotify queue, directories created in a
// burst overflow it and their IN_CREATE events are lost. The daemon warns,
// watches them all after a rescan, sweeps at once (sweeps are an hour
// apart here) and counts no removal; a file deleted in the last directory
// is then reported by its event and rescued.
func TestOverflow(t *testing.T) {
	restore := watchtest.LowQueue(t, 4)
	h := startHooked(t, "tmpfs", func(w, r string) *config.Config { return testConfig(t, w, r, "", "") }, nil,
		hooks{running: func(h *harness) { waitWatcher(h); restore() }})
	restore()
	fullBefore := value(h.d.m.Sweeps.WithLabelValues("full"))

	// Bursts of directories until one overflows the queue: the reader
	// watches each new directory as its event comes, far slower than
	// mkdir, so the first burst almost always does; the bound keeps a
	// surprise from hanging the test.
	var dirs []string
	for burst := 0; len(h.logs.FilterMessage("inotify queue overflowed; rescanning watched trees").All()) == 0; burst++ {
		if burst == 20 {
			t.Fatalf("no overflow after %d directories in bursts of 200 with a 4-event queue", len(dirs))
		}
		for i := range 200 {
			d := filepath.Join(h.watched, fmt.Sprintf("b%02d-%03d", burst, i))
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
			dirs = append(dirs, d)
		}
		// A second for the overflow's warning, woken by every log line.
		deadline := time.After(time.Second)
	burst:
		for {
			ch := h.wake.C()
			if len(h.logs.FilterMessage("inotify queue overflowed; rescanning watched trees").All()) > 0 {
				break
			}
			select {
			case <-ch:
			case <-deadline:
				break burst
			}
		}
	}
	want := len(dirs) + 1 // and the root
	h.waitFor(fmt.Sprintf("%d watches", want), func() bool { return h.d.trees.watcher().Watches() == want })
	h.waitFor("the watch gauge", func() bool { return value(h.d.m.Watches) == float64(want) })

	// One warning per overflow handled, each counting the overflows it
	// covers; a later one may still be on its way, so both are re-read.
	warnings := func() (n int) {
		for _, e := range h.logs.FilterMessage("inotify queue overflowed; rescanning watched trees").All() {
			if e.Level != zapcore.WarnLevel {
				t.Fatalf("overflow logged at %v, want warn", e.Level)
			}
			k, _ := field(e, "overflows").(int64)
			n += int(k)
		}
		return n
	}
	h.waitFor("the overflow counter to match the warnings", func() bool {
		return value(h.d.m.Overflows) == float64(warnings())
	})
	// Sweeps are an hour apart: only the overflow can start one now.
	h.waitFor("a full sweep after the overflow", func() bool {
		return value(h.d.m.Sweeps.WithLabelValues("full")) > fullBefore
	})
	if got := value(h.d.m.Events); got != 0 {
		t.Errorf("removal_events_total = %v with nothing removed, want 0 (an overflow is no removal)", got)
	}

	// The last directory's watch reports a removal there.
	p := filepath.Join(dirs[len(dirs)-1], "last.log")
	write(t, p, "last\n")
	testproc.Start(t, testproc.Open(p, "r"), testproc.Unlink(p))
	h.wait("rescue in the last directory", 1, msgPath("file rescued", p))
	if got := value(h.d.m.Events); got < 1 {
		t.Errorf("removal_events_total = %v, want the unlink in the last directory", got)
	}
}

// TestRootRecreated: a watched root that is removed is logged and loses
// its watch at once; re-created, it is watched again from the next full
// sweep, and a holder there that exits shortly after its unlink is caught
// through the event.
func TestRootRecreated(t *testing.T) {
	h := start(t, "tmpfs", func(w, r string) *config.Config { return testConfig(t, w, r, "", "") },
		func(o *Options) { o.Config.Scan.Interval = config.Duration(200 * time.Millisecond) })
	if got := value(h.d.m.Watches); got != 1 {
		t.Fatalf("watch gauge = %v, want 1", got)
	}
	if err := os.RemoveAll(h.watched); err != nil {
		t.Fatal(err)
	}
	rm := h.wait("root removal logged", 1, msg("watched root removed; watched again once it exists, from the next full sweep"))
	if got := field(rm[0], "dir"); got != h.watched {
		t.Errorf("dir = %v, want %s", got, h.watched)
	}
	if got := value(h.d.m.Watches); got != 0 {
		t.Errorf("watch gauge = %v after the root was removed, want 0", got)
	}
	if err := os.Mkdir(h.watched, 0o755); err != nil {
		t.Fatal(err)
	}
	h.wait("root watched again", 1, func(e observer.LoggedEntry) bool {
		return e.Message == "watching root" && field(e, "dir") == h.watched
	})
	if got := value(h.d.m.Watches); got != 1 {
		t.Errorf("watch gauge = %v after the root came back, want 1", got)
	}

	events := value(h.d.m.Events)
	p := filepath.Join(h.watched, "again.log")
	holder := testproc.Start(t, testproc.Open(p, "rw"), testproc.Write(0, "again\n"), testproc.Ready(),
		testproc.Unlink(p), testproc.Sleep(200*time.Millisecond), testproc.Exit())
	holder.Wait(t)
	h.wait("rescue in the re-created root", 1, msgPath("file rescued", p))
	if got := value(h.d.m.Events); got <= events {
		t.Errorf("removal_events_total = %v, want more than %v: the re-created root reported nothing", got, events)
	}
}

// TestRetryFailed: a rescue that fails (a symlink planted inside the
// rescue root, where the rescued file's directories go, which the engine
// refuses) is logged and tried again by later sweeps, each failure logged;
// once the cause is gone, the file is rescued.
func TestRetryFailed(t *testing.T) {
	var planted string
	h := start(t, "tmpfs", func(w, r string) *config.Config {
		// The rescued file keeps its original path under the root: its
		// first component is the first directory the engine opens.
		if err := os.Mkdir(r, 0o700); err != nil {
			t.Fatal(err)
		}
		elsewhere := filepath.Join(filepath.Dir(r), "elsewhere")
		if err := os.Mkdir(elsewhere, 0o700); err != nil {
			t.Fatal(err)
		}
		planted = filepath.Join(r, strings.Split(w, "/")[1])
		if err := os.Symlink(elsewhere, planted); err != nil {
			t.Fatal(err)
		}
		return testConfig(t, w, r, "", "")
	}, func(o *Options) { o.Config.Scan.Interval = config.Duration(100 * time.Millisecond) })
	p := filepath.Join(h.watched, "retry.log")
	write(t, p, "retry me\n")
	testproc.Start(t, testproc.Open(p, "r"), testproc.Unlink(p))

	// The first attempt, and a retry a sweep interval later.
	h.wait("two failed attempts", 2, msgPath("rescue failed", p))
	// The engine logs "rescue failed"; the daemon counts the failure
	// after it, then releases the pin (pins_held wakes the wait).
	h.waitFor("the failures counted", func() bool { return value(h.d.m.Failures) >= 2 })
	if got := value(h.d.m.Failures); got < 2 {
		t.Errorf("rescue_failures_total = %v, want at least 2", got)
	}
	if err := os.Remove(planted); err != nil {
		t.Fatal(err)
	}
	ev := h.wait("rescue once the root is usable", 1, msgPath("file rescued", p))
	if got, err := os.ReadFile(field(ev[0], "rescued_to").(string)); err != nil || string(got) != "retry me\n" {
		t.Errorf("rescued file: %q, %v", got, err)
	}
	failed := len(h.logs.Filter(msgPath("rescue failed", p)).All())
	if got := value(h.d.m.Failures); got != float64(failed) {
		t.Errorf("rescue_failures_total = %v, want %d (one per rescue failed event)", got, failed)
	}
	h.fullSweeps(3)
	if n := len(h.logs.Filter(msgPath("file rescued", p)).All()); n != 1 {
		t.Errorf("%d file rescued events, want 1", n)
	}
	if n := len(h.logs.Filter(msgPath("rescue failed", p)).All()); n != failed {
		t.Errorf("%d rescue failed events after the rescue, want still %d", n, failed)
	}
}

func TestRetryBackoff(t *testing.T) {
	tests := []struct {
		name     string
		n        int
		interval time.Duration
		want     time.Duration
	}{
		{"first retry after one interval", 1, 30 * time.Second, 30 * time.Second},
		{"doubles", 2, 30 * time.Second, time.Minute},
		{"keeps doubling", 7, 30 * time.Second, 32 * time.Minute},
		{"capped at an hour", 8, 30 * time.Second, time.Hour},
		{"stays capped", 1000, 30 * time.Second, time.Hour},
		{"interval above the cap", 3, 2 * time.Hour, 2 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := retryBackoff(tt.n, tt.interval); got != tt.want {
				t.Errorf("retryBackoff(%d, %v) = %v, want %v", tt.n, tt.interval, got, tt.want)
			}
		})
	}
}

// TestRetryDue: after a failure found by the sweep at t0, the retry is due
// for the sweep one interval later (a little early is fine, ticks drift),
// not for the one in between; after the second failure, two intervals.
func TestRetryDue(t *testing.T) {
	const iv = 10 * time.Second
	t0 := time.Unix(1_000_000, 0)
	var in inode
	in.failed(t0, iv)
	tests := []struct {
		name string
		at   time.Time
		want bool
	}{
		{"same sweep", t0, false},
		{"before half an interval", t0.Add(iv/2 - time.Millisecond), false},
		{"next sweep, a little early", t0.Add(iv - time.Second), true},
		{"next sweep", t0.Add(iv), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := in.retryDue(tt.at); got != tt.want {
				t.Errorf("retryDue(t0+%v) = %v, want %v", tt.at.Sub(t0), got, tt.want)
			}
		})
	}
	t1 := t0.Add(iv)
	in.failed(t1, iv)
	if in.retryDue(t1.Add(iv)) {
		t.Error("second retry due one interval after the second failure, want two")
	}
	if !in.retryDue(t1.Add(2 * iv)) {
		t.Error("second retry not due two intervals after the second failure")
	}
	in.st = stRescued
	if in.retryDue(t1.Add(time.Hour)) {
		t.Error("a rescued inode is due for a retry")
	}
}

// queueJobs builds a daemon without running it, and pins and queues the
// deleted files of a real holder as a sweep would.
func queueJobs(t *testing.T, n int) (*Daemon, *observer.ObservedLogs) {
	t.Helper()
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 64)
	watched := filepath.Join(mnt, "w")
	if err := os.Mkdir(watched, 0o755); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	d, err := New(Options{Config: testConfig(t, watched, filepath.Join(mnt, "rescued"), "", "")}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	var steps []testproc.Step
	for i := range n {
		p := filepath.Join(watched, fmt.Sprintf("%d.log", i))
		write(t, p, p)
		steps = append(steps, testproc.Open(p, "r"), testproc.Unlink(p))
	}
	holder := testproc.Start(t, steps...)
	now := time.Now()
	res, err := d.sweeper.SweepPIDs(context.Background(), []int{holder.PID})
	if err != nil {
		t.Fatal(err)
	}
	for i := range res.Candidates {
		d.consider(&res.Candidates[i], now)
	}
	if got := len(d.workers.jobs); got != n {
		t.Fatalf("%d jobs queued, want %d", got, n)
	}
	return d, logs
}

// TestShutdownReleasesQueued: jobs still queued when shutdown begins are
// released, neither attempted nor counted as failures. A worker's select
// picks at random between the cancelled context and a waiting job, so it
// is run until the queue is empty.
func TestShutdownReleasesQueued(t *testing.T) {
	d, logs := queueJobs(t, 5)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var wg sync.WaitGroup
	for len(d.workers.jobs) > 0 {
		d.workers.work(ctx, &wg, &slot{})
	}
	wg.Wait()
	for _, m := range []string{"rescue failed", "rescue cancelled", "file rescued"} {
		if n := logs.FilterMessage(m).Len(); n != 0 {
			t.Errorf("%d %q events for jobs queued at shutdown, want 0", n, m)
		}
	}
	if got := value(d.m.Failures); got != 0 {
		t.Errorf("rescue_failures_total = %v, want 0", got)
	}
	if got := value(d.m.PinsHeld); got != 0 {
		t.Errorf("pins_held = %v, want 0", got)
	}
	if n := d.ledger.len(); n != 0 {
		t.Errorf("%d inodes still known after their jobs were abandoned, want 0", n)
	}
}

// TestCancelledRescueIsNoFailure: a rescue that ends because shutdown
// cancelled it is abandoned by design: no "rescue failed" event, no
// failure counted, its pin released.
func TestCancelledRescueIsNoFailure(t *testing.T) {
	d, logs := queueJobs(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var wg sync.WaitGroup
	d.rescue(ctx, <-d.workers.jobs, &wg, nil)
	wg.Wait()
	if n := logs.FilterMessage("rescue failed").Len(); n != 0 {
		t.Errorf(`%d "rescue failed" events for a cancelled rescue, want 0: %v`, n, logs.FilterMessage("rescue failed").All())
	}
	if got := value(d.m.Failures); got != 0 {
		t.Errorf("rescue_failures_total = %v, want 0", got)
	}
	if got := value(d.m.PinsHeld); got != 0 {
		t.Errorf("pins_held = %v, want 0", got)
	}
}

// TestHoldersPruned: a holder that exited is dropped from its inode's
// holders by the next full sweep, while the inode stays known.
func TestHoldersPruned(t *testing.T) {
	h := start(t, "tmpfs", func(w, r string) *config.Config { return testConfig(t, w, r, "", "") },
		func(o *Options) { o.Config.Scan.Interval = config.Duration(100 * time.Millisecond) })
	p := filepath.Join(h.watched, "shared.log")
	write(t, p, "shared\n")
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	key := scanner.Key{Dev: st.Dev, Ino: st.Ino}
	a := testproc.Start(t, testproc.Open(p, "r"))
	b := testproc.Start(t, testproc.Open(p, "r"), testproc.Unlink(p))
	h.wait("file rescued", 1, msgPath("file rescued", p))
	// Sweeps see every process on the host: look at this file only.
	holders := func() []int { return h.d.ledger.holders(key) }
	h.waitFor("both holders known", func() bool { return len(holders()) == 2 })
	b.Exit(t)
	h.fullSweeps(2)
	if got := holders(); len(got) != 1 || got[0] != a.PID {
		t.Errorf("holders = %v after %d exited, want [%d]", got, b.PID, a.PID)
	}
}

func TestDefaultWorkers(t *testing.T) {
	d, err := New(Options{Config: testConfig(t, "/nonexistent/w", "/nonexistent/r", "", "")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := min(max(runtime.NumCPU(), 2), DefaultMaxWorkers)
	if d.opt.Workers != want {
		t.Errorf("workers = %d with %d CPUs, want %d", d.opt.Workers, runtime.NumCPU(), want)
	}
}

// TestPruneWaitsForRescue: a prune never runs while a rescue is in flight,
// since the directory a rescue links into looks empty until the link.
func TestPruneWaitsForRescue(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 16)
	rescued := filepath.Join(mnt, "rescued")
	dir := filepath.Join(rescued, "var", "log")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour)
	for _, p := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	d, err := New(Options{Config: testConfig(t, filepath.Join(mnt, "w"), rescued, "", "")}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	d.retention.publishing.RLock() // a rescue in flight
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.retention.pruneAll(context.Background())
	}()
	select {
	case <-done:
		t.Fatal("prune ran during a rescue")
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the rescue's directory went during the rescue: %v", err)
	}
	d.retention.publishing.RUnlock()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("prune did not run once the rescue ended")
	}
	if _, err := os.Stat(filepath.Dir(dir)); !os.IsNotExist(err) {
		t.Errorf("old empty directories should go once no rescue runs: %v", err)
	}
}
