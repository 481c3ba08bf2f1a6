package daemon

import (
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

// waker wakes the tests that wait on the daemon: its channel is closed
// (and replaced) on every log line the daemon writes and on every change
// of a gauge the harness watches, so a waiting test checks its condition
// again then instead of polling. Take the channel before checking the
// condition: a change between the check and the wait still wakes.
type waker struct {
	mu sync.Mutex
	ch chan struct{}
}

func newWaker() *waker { return &waker{ch: make(chan struct{})} }

// C returns the channel closed at the next change.
func (w *waker) C() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}

func (w *waker) wake() {
	w.mu.Lock()
	close(w.ch)
	w.ch = make(chan struct{})
	w.mu.Unlock()
}

// until waits until cond holds, checking it at every wake, and fails t
// after 20 s with what.
func (w *waker) until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		ch := w.C()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// wakeCore wakes w after every entry its core writes.
type wakeCore struct {
	zapcore.Core
	w *waker
}

func (c wakeCore) With(fields []zapcore.Field) zapcore.Core {
	return wakeCore{c.Core.With(fields), c.w}
}

func (c wakeCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c wakeCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	err := c.Core.Write(e, fields)
	c.w.wake()
	return err
}

// wakeGauge wakes w after every Set: the daemon sets pins_held and the
// watch gauge without a log line.
type wakeGauge struct {
	prometheus.Gauge
	w *waker
}

func (g wakeGauge) Set(v float64) {
	g.Gauge.Set(v)
	g.w.wake()
}

// watchDir wakes w on every change inotify reports in dir (a file
// created, written, renamed into it) until the test ends.
func watchDir(t *testing.T, w *waker, dir string) {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatalf("inotify_init1: %v", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO|unix.IN_MODIFY); err != nil {
		unix.Close(fd)
		t.Fatalf("inotify_add_watch %s: %v", dir, err)
	}
	// Non-blocking and in the runtime's poller, so that Close ends a
	// Read waiting for events (a blocking read(2) would outlive close(2)).
	f := os.NewFile(uintptr(fd), "inotify")
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			if _, err := f.Read(buf); err != nil {
				return
			}
			w.wake()
		}
	}()
	t.Cleanup(func() {
		f.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("inotify reader did not stop")
		}
	})
}
