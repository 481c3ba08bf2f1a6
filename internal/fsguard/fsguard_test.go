package fsguard

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestGuard: a call that returns in time passes; one that does not marks
// its mount, which then refuses calls at once, while other mounts go on;
// when the stuck call returns, late runs and the mount answers again; past
// MaxStuck every call is refused. The stuck calls here block on channels:
// what the guard does not know is why a call does not return.
func TestGuard(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	var changes atomic.Int32
	g := New(Options{
		Timeout: 50 * time.Millisecond, MaxStuck: 2,
		Describe: func(id int) (string, string) { return "/mnt/x", "fuse" },
		Changed:  func(int, bool) { changes.Add(1) },
	}, zap.New(core))

	ran := false
	if err := g.Do(1, func() { ran = true }, nil); err != nil || !ran {
		t.Fatalf("quick call: err %v, ran %v", err, ran)
	}

	release := make(chan struct{})
	lateRan := make(chan struct{})
	start := time.Now()
	err := g.Do(7, func() { <-release }, func() { close(lateRan) })
	if !errors.Is(err, ErrUnresponsive) {
		t.Fatalf("stuck call: want ErrUnresponsive, got %v", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > 2*time.Second {
		t.Errorf("stuck call returned after %v, want about the 50ms timeout", d)
	}
	if !g.Unresponsive(7) || g.Stuck() != 1 {
		t.Fatalf("mount 7 unresponsive %v, stuck %d", g.Unresponsive(7), g.Stuck())
	}
	called := false
	if err := g.Do(7, func() { called = true }, nil); !errors.Is(err, ErrUnresponsive) || called {
		t.Errorf("call on a marked mount: err %v, ran %v (want refused at once)", err, called)
	}
	if err := g.Do(8, func() {}, nil); err != nil {
		t.Errorf("another mount: %v", err)
	}
	if n := logs.FilterMessage("filesystem unresponsive").Len(); n != 1 {
		t.Errorf("%d unresponsive events, want 1", n)
	}
	if e := logs.FilterMessage("filesystem unresponsive").All(); len(e) == 1 && e[0].ContextMap()["mountpoint"] != "/mnt/x" {
		t.Errorf("event fields: %v", e[0].ContextMap())
	}

	// A second stuck mount reaches MaxStuck: everything is refused.
	release9 := make(chan struct{})
	if err := g.Do(9, func() { <-release9 }, nil); !errors.Is(err, ErrUnresponsive) {
		t.Fatalf("second stuck call: %v", err)
	}
	if err := g.Do(10, func() {}, nil); !errors.Is(err, ErrTooManyStuck) {
		t.Errorf("at MaxStuck: want ErrTooManyStuck, got %v", err)
	}

	close(release)
	select {
	case <-lateRan:
	case <-time.After(5 * time.Second):
		t.Fatal("late did not run after the stuck call returned")
	}
	waitFor(t, func() bool { return logs.FilterMessage("filesystem responsive again").Len() == 1 })
	if g.Unresponsive(7) {
		t.Error("mount 7 still unresponsive after its call returned")
	}
	if err := g.Do(7, func() {}, nil); err != nil {
		t.Errorf("mount 7 after its call returned: %v", err)
	}
	if err := g.Do(10, func() {}, nil); err != nil {
		t.Errorf("below MaxStuck again: %v", err)
	}
	if n := logs.FilterMessage("filesystem responsive again").Len(); n != 1 {
		t.Errorf("%d responsive-again events, want 1", n)
	}
	close(release9)
	waitFor(t, func() bool { return logs.FilterMessage("filesystem responsive again").Len() == 2 })
	if n := changes.Load(); n != 4 {
		t.Errorf("%d changes, want 4 (two mounts down and up)", n)
	}

	rel := g.Hold(3)
	if !g.Unresponsive(3) {
		t.Error("Hold did not mark the mount")
	}
	rel()
	rel()
	if g.Unresponsive(3) || g.Stuck() != 0 {
		t.Error("release did not clear the mount, or counted twice")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}
