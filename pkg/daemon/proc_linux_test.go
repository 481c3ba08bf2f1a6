package daemon

import (
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/relinkd/relinkd/internal/testproc"
)

func TestNewLeaders(t *testing.T) {
	last, ok := lastPID("/proc")
	if !ok {
		t.Fatal("no last pid in /proc/loadavg")
	}
	// A Go holder is multi-threaded: its thread ids follow its pid.
	h := testproc.Start(t, testproc.Sleep(0))
	now, _ := lastPID("/proc")
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(h.PID) + "/task")
	if err != nil {
		t.Fatal(err)
	}
	if len(tasks) < 2 {
		t.Logf("holder has %d threads", len(tasks))
	}
	got := newLeaders("/proc", last, now)
	if n := countOf(got, h.PID); n != 1 {
		t.Errorf("holder pid %d appears %d times in %v", h.PID, n, got)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		if tid != h.PID && slices.Contains(got, tid) {
			t.Errorf("thread %d of the holder listed as a process: %v", tid, got)
		}
	}
	if slices.Contains(got, os.Getpid()) {
		t.Errorf("the test process (born before the range) is listed: %v", got)
	}
	if !slices.IsSortedFunc(got, func(a, b int) int { return b - a }) {
		t.Errorf("not newest first: %v", got)
	}
}

func countOf(s []int, v int) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

func TestLastPIDAndBirthTime(t *testing.T) {
	if _, ok := lastPID("/proc"); !ok {
		t.Fatal("lastPID failed")
	}
	f, err := os.CreateTemp(t.TempDir(), "bt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a, ok := birthTimeFD(int(f.Fd()))
	if !ok {
		t.Fatal("birthTimeFD failed")
	}
	b, ok := birthTime("/proc", os.Getpid(), int(f.Fd()))
	if !ok || a != b {
		t.Errorf("birth time through the fd %d, through /proc %d (%v)", a, b, ok)
	}
	if _, ok := birthTime("/proc", os.Getpid(), 1<<20); ok {
		t.Error("birth time of a missing descriptor")
	}
}
