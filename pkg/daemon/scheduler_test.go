package daemon

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/pkg/scanner"
	"github.com/relinkd/relinkd/pkg/watch"
)

// testScheduler returns a scheduler for a daemon of pid 1 whose clock is
// *clock; its /proc is never read by the calls tested here.
func testScheduler(clock *time.Time) *scheduler {
	s := newScheduler(procfs.New("/nonexistent"), 1, &views{procRoot: "/proc"})
	s.now = func() time.Time { return *clock }
	return s
}

func holderIn(pid int, dir string) *scanner.Candidate {
	return &scanner.Candidate{PID: pid, Path: []byte(dir + "/f.log")}
}

// TestLikelyPIDs: an event's likely holders are the pids seen holding
// deleted files in its directories and those the holder index has there,
// plus the processes a listing shows that the previous one did not;
// newest first, without the swept ones and the daemon itself.
func TestLikelyPIDs(t *testing.T) {
	tests := []struct {
		name   string
		noted  []*scanner.Candidate // deleted files seen, by holder
		held   []scanner.Held       // the holder index
		known  []int                // the listing at the last full sweep
		dirs   []string
		listed []int
		swept  []int
		want   []int
	}{
		{name: "deleted files seen in the directory",
			noted: []*scanner.Candidate{holderIn(10, "/var/log/a"), holderIn(30, "/var/log/a"), holderIn(20, "/var/log/b")},
			dirs:  []string{"/var/log/a"}, want: []int{30, 10}},
		{name: "holder index",
			held: []scanner.Held{{PID: 40, Dir: "/var/log/a"}, {PID: 50, Dir: "/srv"}},
			dirs: []string{"/var/log/a", "/srv"}, want: []int{50, 40}},
		{name: "both, once each",
			noted: []*scanner.Candidate{holderIn(40, "/var/log/a")},
			held:  []scanner.Held{{PID: 40, Dir: "/var/log/a"}, {PID: 41, Dir: "/var/log/a"}},
			dirs:  []string{"/var/log/a"}, want: []int{41, 40}},
		{name: "swept already and the daemon left out",
			noted: []*scanner.Candidate{holderIn(1, "/d"), holderIn(7, "/d"), holderIn(8, "/d")},
			dirs:  []string{"/d"}, swept: []int{8}, want: []int{7}},
		{name: "new in the listing",
			known: []int{1, 5, 9}, listed: []int{1, 5, 9, 12, 15}, want: []int{15, 12}},
		{name: "listing and directory",
			noted: []*scanner.Candidate{holderIn(5, "/d")},
			known: []int{1, 5}, dirs: []string{"/d"}, listed: []int{1, 5, 6}, want: []int{6, 5}},
		{name: "nothing known of the directory", noted: []*scanner.Candidate{holderIn(5, "/d")},
			dirs: []string{"/e"}, want: []int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := time.Unix(1_000_000, 0)
			s := testScheduler(&clock)
			for _, c := range tt.noted {
				s.notePID(c)
			}
			s.holders.replace(tt.held)
			s.forget(clock, tt.known)
			dirs := make(map[string]bool)
			for _, d := range tt.dirs {
				dirs[d] = true
			}
			swept := make(map[int]bool)
			for _, pid := range tt.swept {
				swept[pid] = true
			}
			got := s.likelyPIDs(dirs, tt.listed, swept)
			if !slices.Equal(got, tt.want) {
				t.Errorf("likelyPIDs:\n-want %v\n+got  %v", tt.want, got)
			}
			if tt.listed != nil {
				// The listing is the reference now: nothing is new.
				if again := s.likelyPIDs(nil, tt.listed, nil); len(again) != 0 {
					t.Errorf("the same listing again gives %v, want none", again)
				}
			}
		})
	}
}

// TestSchedulerForget: a full sweep drops the pid hints it did not renew.
func TestSchedulerForget(t *testing.T) {
	clock := time.Unix(1_000_000, 0)
	s := testScheduler(&clock)
	s.notePID(holderIn(10, "/a"))
	s.notePID(holderIn(20, "/b"))
	start := clock.Add(time.Second)
	clock = start.Add(time.Millisecond)
	s.notePID(holderIn(20, "/b")) // seen again by the sweep that started at start
	s.forget(start, nil)
	dirs := map[string]bool{"/a": true, "/b": true}
	if got := s.likelyPIDs(dirs, nil, nil); !slices.Equal(got, []int{20}) {
		t.Errorf("after forget:\n-want [20]\n+got  %v", got)
	}
}

// TestYoung: new processes stay young for youngTTL, newest first, at most
// maxYoung of them.
func TestYoung(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	many := make([]int, maxYoung+10)
	for i := range many {
		many[i] = 1000 + i
	}
	type step struct {
		after time.Duration // since t0
		fresh []int
	}
	tests := []struct {
		name  string
		steps []step
		want  []int // from the last step
		n     int   // set: only this many, the newest, of many
	}{
		{name: "newest first", want: []int{30, 20, 12, 10}, steps: []step{{0, []int{10, 12}}, {time.Millisecond, []int{20}}, {2 * time.Millisecond, []int{30}}}},
		{name: "old ones leave after youngTTL", want: []int{20}, steps: []step{{0, []int{10}}, {time.Second, []int{20}}, {youngTTL + time.Millisecond, nil}}},
		{name: "bounded, the highest pids kept", n: maxYoung, steps: []step{{0, many}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := t0
			s := testScheduler(&clock)
			var got []int
			for _, st := range tt.steps {
				clock = t0.Add(st.after)
				got = s.addYoung(st.fresh)
			}
			if tt.n > 0 {
				if len(got) != tt.n || got[0] != many[len(many)-1] || got[len(got)-1] != many[len(many)-tt.n] {
					t.Errorf("got %d pids from %d to %d, want %d from %d down", len(got), got[0], got[len(got)-1], tt.n, many[len(many)-1])
				}
				return
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("young:\n-want %v\n+got  %v", tt.want, got)
			}
		})
	}
}

// TestNoteEvents: removals name their directory (a view in another
// namespace as its holders see it), creations mark theirs, overflows are
// counted and none of these two is a removal.
func TestNoteEvents(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	clock := t0
	s := testScheduler(&clock)
	s.fullDone(t0)
	events := make(chan watch.Event, 8)
	for _, ev := range []watch.Event{
		{Dir: "/var/log/a", Name: "x", At: t0.Add(time.Second)},
		{Dir: "/proc/123/root/var/log/b", Name: "y", At: t0.Add(time.Second)},
		{Dir: "/var/log/c", Name: "z", Created: true, At: t0.Add(time.Second)},
		{Dir: "/var/log/old", Name: "z", Created: true, At: t0.Add(-time.Second)},
		{Overflow: true},
		{Overflow: true},
	} {
		events <- ev
	}
	dirs := make(map[string]bool)
	if n := s.drainEvents(events, dirs); n != 2 {
		t.Errorf("%d removals, want 2", n)
	}
	if want := map[string]bool{"/var/log/a": true, "/var/log/b": true}; !maps.Equal(dirs, want) {
		t.Errorf("dirs:\n-want %v\n+got  %v", want, dirs)
	}
	if !s.overflowed() || s.takeOverflows() != 2 || s.overflowed() {
		t.Error("two overflows not counted, taken and cleared")
	}
	if !s.takeCreated() || s.takeCreated() {
		t.Error("creations not reported once")
	}
	for _, tt := range []struct {
		dir  string
		want bool
	}{{"/var/log/c", true}, {"/var/log/old", false}, {"/var/log/a", false}} {
		if got := s.unknownHolders(map[string]bool{tt.dir: true}, s.lastFullAt()); got != tt.want {
			t.Errorf("unknownHolders(%s) = %v, want %v", tt.dir, got, tt.want)
		}
	}
	// A full pass after the creation: its creator is known now.
	s.roundDone(t0.Add(2 * time.Second))
	if s.unknownHolders(map[string]bool{"/var/log/c": true}, s.lastFullAt()) {
		t.Error("a creation before the last full pass still counts")
	}
}

// TestFullPass: a full pass asked for twice before it starts runs once; a
// deferred one is pending until asked for or covered by a round.
func TestFullPass(t *testing.T) {
	clock := time.Unix(1_000_000, 0)
	s := testScheduler(&clock)
	s.deferFull()
	if !s.fullPending() {
		t.Fatal("deferred pass not pending")
	}
	s.requestFull()
	s.requestFull()
	if s.fullPending() {
		t.Error("still pending once asked for")
	}
	if len(s.fullReq) != 1 {
		t.Errorf("%d requests queued, want 1", len(s.fullReq))
	}
	s.deferFull()
	s.roundDone(clock)
	if s.fullPending() || !s.lastFullAt().Equal(clock) {
		t.Errorf("a complete round: pending %v, last full pass %v, want false and %v", s.fullPending(), s.lastFullAt(), clock)
	}
	for _, tt := range []struct {
		interval, want time.Duration
	}{{time.Second, time.Second}, {30 * time.Second, 3 * time.Second}, {time.Hour, 5 * time.Second}} {
		if got := fullGap(tt.interval); got != tt.want {
			t.Errorf("fullGap(%v) = %v, want %v", tt.interval, got, tt.want)
		}
	}
}

// TestSweptGone: a sweep that finds processes gone drops them from the
// hints (deleted files seen, the holder index, the young processes), so
// that the next event's round does not sweep them again; the others stay.
func TestSweptGone(t *testing.T) {
	now := time.Unix(1000, 0)
	s := testScheduler(&now)
	s.notePID(holderIn(10, "/d"))
	s.notePID(holderIn(11, "/d"))
	s.notePID(holderIn(11, "/e"))
	s.holders.replace([]scanner.Held{{PID: 11, Dir: "/d"}, {PID: 12, Dir: "/d"}})
	s.addYoung([]int{11, 13})
	s.swept([]int{11, 12}, &scanner.Result{Held: []scanner.Held{{PID: 12, Dir: "/d"}}, Gone: []int{11}})
	if got := s.likelyPIDs(map[string]bool{"/d": true, "/e": true}, nil, nil); !slices.Equal(got, []int{12, 10}) {
		t.Errorf("likely holders after pid 11 was found gone: %v, want [12 10]", got)
	}
	if got := s.addYoung(nil); !slices.Equal(got, []int{13}) {
		t.Errorf("young after pid 11 was found gone: %v, want [13]", got)
	}
}
