package daemon

import (
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/internal/testproc"
	"github.com/relinkd/relinkd/pkg/scanner"
)

func TestNewLeaders(t *testing.T) {
	// A Go holder is multi-threaded: its thread ids follow its pid. The
	// pid counter wraps at kernel.pid_max (32768 by default); when it did
	// during the start, (last, now] is no range, so start another.
	var last, now int
	var h *testproc.Holder
	for try := 0; ; try++ {
		var ok bool
		if last, ok = procfs.New("/proc").LastPID(); !ok {
			t.Fatal("no last pid in /proc/loadavg")
		}
		h = testproc.Start(t, testproc.Sleep(0))
		now, _ = procfs.New("/proc").LastPID()
		if last < h.PID && h.PID <= now {
			break
		}
		if try == 5 {
			t.Fatalf("holder pid %d never inside (%d, %d]: the pid counter keeps wrapping", h.PID, last, now)
		}
		h.Kill()
	}
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(h.PID) + "/task")
	if err != nil {
		t.Fatal(err)
	}
	if len(tasks) < 2 {
		t.Logf("holder has %d threads", len(tasks))
	}
	got := newLeaders(procfs.New("/proc"), last, now)
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
	if _, ok := procfs.New("/proc").LastPID(); !ok {
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
	b, ok := birthTime("/proc", &scanner.Candidate{PID: os.Getpid(), FD: int(f.Fd())})
	if !ok || a != b {
		t.Errorf("birth time through the fd %d, through /proc %d (%v)", a, b, ok)
	}
	if _, ok := birthTime("/proc", &scanner.Candidate{PID: os.Getpid(), FD: 1 << 20}); ok {
		t.Error("birth time of a missing descriptor")
	}
}
