package scanner

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
)

// TestIdentify opens a holder's descriptors through /proc/PID/fd/N, as the
// relink engine pins them, and identifies each from that open file alone:
// a deleted file gives exactly the candidate a sweep gives (name, inode,
// mount; the holder's fields copied), everything a sweep leaves out is
// ErrNotCandidate.
func TestIdentify(t *testing.T) {
	testfs.RequireRoot(t)
	dir := testfs.Mount(t, "tmpfs", 16)
	p := func(name string) string { return filepath.Join(dir, name) }
	for _, n := range []string{"plain.log", "linked.log", "live (deleted)", "kept.log"} {
		if err := os.WriteFile(p(n), []byte("seed "+n), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	h := testproc.Start(t,
		testproc.Open(p("plain.log"), "a"),      // 0: deleted
		testproc.Open(p("linked.log"), "r"),     // 1: deleted, second link kept
		testproc.Open(p("live (deleted)"), "r"), // 2: live, suffix in its name
		testproc.Open(p("kept.log"), "r"),       // 3: live
		testproc.TmpFile(dir, false),            // 4: O_TMPFILE
		testproc.Memfd("m"),                     // 5: memfd
		testproc.Pipe(),                         // 6, 7
		testproc.Link(p("linked.log"), p("other.log")),
		testproc.Unlink(p("plain.log")),
		testproc.Unlink(p("linked.log")),
	)
	_, swept := sweepPIDs(t, h.PID)
	tests := []struct {
		name      string
		idx       int
		candidate bool
	}{
		{"deleted", 0, true},
		{"deleted name, other link kept", 1, true},
		{"O_TMPFILE", 4, true},
		{"live file named x (deleted)", 2, false},
		{"live file", 3, false},
		{"memfd", 5, false},
		{"pipe", 6, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd := h.FDs[tt.idx]
			pin, err := unix.Open(fmt.Sprintf("/proc/%d/fd/%d", h.PID, fd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(pin)
			// The holder fields as a sweep reads them; for a descriptor
			// a sweep leaves out, only pid and fd.
			holder, ok := swept[[2]int{h.PID, fd}]
			if ok != tt.candidate {
				t.Fatalf("sweep reports fd %d: %v, want %v", fd, ok, tt.candidate)
			}
			if !ok {
				holder = Candidate{PID: h.PID, FD: fd}
			}
			got, err := Identify("/proc", &holder, pin)
			if !tt.candidate {
				if !errors.Is(err, ErrNotCandidate) {
					t.Fatalf("want ErrNotCandidate, got %+v, %v", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, holder) {
				t.Errorf("Identify differs from the sweep:\n-want %+v\n+got  %+v", holder, got)
			}
		})
	}
}
