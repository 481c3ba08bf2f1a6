package daemon

import (
	"slices"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/relinkd/relinkd/pkg/scanner"
)

// cand makes up a candidate: a descriptor of pid (started at start) on
// inode ino of device 1.
func cand(pid int, start uint64, ino uint64) *scanner.Candidate {
	return &scanner.Candidate{PID: pid, StartTime: start, FD: 3, Dev: 1, Ino: ino, Path: []byte("/var/log/app/x.log")}
}

// testLedger returns a ledger whose clock is *clock.
func testLedger(t *testing.T, clock *time.Time) *ledger {
	l := newLedger(zaptest.NewLogger(t))
	l.now = func() time.Time { return *clock }
	return l
}

// TestLedgerSee: what the ledger says of a candidate, by what it knows of
// its inode and holder; for a holder not seen before, what confirm says
// given the file's birth time.
func TestLedgerSee(t *testing.T) {
	const iv = 10 * time.Second
	t0 := time.Unix(1_000_000, 0)
	const btime = 42
	a, b := cand(100, 7, 5), cand(200, 9, 5) // two holders of inode 5
	tests := []struct {
		name    string
		prepare func(l *ledger)
		c       *scanner.Candidate
		at      time.Time // start of the sweep that found c
		want    sight     // entry left out
		btime   int64     // with want.check: the birth time confirm is given
		confirm sight     // what confirm says then
		holders []int     // the inode's holders afterwards, sorted; nil: no entry
	}{
		{name: "new inode", prepare: func(*ledger) {}, c: a, at: t0, want: sight{handle: true}},
		{name: "rescued, same holder", c: a, at: t0,
			prepare: func(l *ledger) { l.record(a, stRescued, btime) },
			want:    sight{}, holders: []int{100}},
		{name: "rescued, another holder of the same file", c: b, at: t0,
			prepare: func(l *ledger) { l.record(a, stRescued, btime) },
			want:    sight{check: true}, btime: btime, confirm: sight{}, holders: []int{100, 200}},
		{name: "rescued, another file under a reused number", c: b, at: t0,
			prepare: func(l *ledger) { l.record(a, stRescued, btime) },
			want:    sight{check: true}, btime: btime + 1, confirm: sight{handle: true}},
		{name: "same pid, another process (pid reused)", c: cand(100, 8, 5), at: t0,
			prepare: func(l *ledger) { l.record(a, stReported, btime) },
			want:    sight{check: true}, btime: btime, confirm: sight{}, holders: []int{100, 100}},
		{name: "ignored, another holder: matched again", c: b, at: t0,
			prepare: func(l *ledger) { l.record(a, stIgnored, btime) },
			want:    sight{check: true}, btime: btime, confirm: sight{handle: true}, holders: []int{100, 200}},
		{name: "ignored, same holder", c: a, at: t0,
			prepare: func(l *ledger) { l.record(a, stIgnored, btime) },
			want:    sight{}, holders: []int{100}},
		{name: "queued, another holder: no birth time needed", c: b, at: t0,
			prepare: func(l *ledger) { l.record(a, stQueued, btime) },
			want:    sight{}, holders: []int{100, 200}},
		{name: "failed, same sweep", c: a, at: t0,
			prepare: func(l *ledger) { l.recordFailure(a, t0, iv, btime) },
			want:    sight{failures: 1}, holders: []int{100}},
		{name: "failed, next sweep: retry due", c: a, at: t0.Add(iv),
			prepare: func(l *ledger) { l.recordFailure(a, t0, iv, btime) },
			want:    sight{handle: true, retry: true, failures: 1}, holders: []int{100}},
		{name: "failed twice, one interval later: backing off", c: a, at: t0.Add(2 * iv),
			prepare: func(l *ledger) {
				l.recordFailure(a, t0, iv, btime)
				l.finish(a.Key(), stFailed, t0.Add(iv), iv)
			},
			want: sight{failures: 2}, holders: []int{100}},
		{name: "failed, another holder, retry due", c: b, at: t0.Add(iv),
			prepare: func(l *ledger) { l.recordFailure(a, t0, iv, btime) },
			want:    sight{check: true}, btime: btime, confirm: sight{handle: true, retry: true, failures: 1}, holders: []int{100, 200}},
		{name: "no room: waits for it", c: a, at: t0.Add(time.Hour),
			prepare: func(l *ledger) {
				l.record(a, stQueued, btime)
				l.noSpace(a.Key(), spaceWait{root: "/r", need: 10, min: 5})
			},
			want: sight{wait: true, spaceWait: spaceWait{root: "/r", need: 10, min: 5}}, holders: []int{100}},
		{name: "outcome recorded by finish", c: a, at: t0.Add(time.Hour),
			prepare: func(l *ledger) {
				l.record(a, stQueued, btime)
				l.finish(a.Key(), stSkipped, t0, iv)
			},
			want: sight{}, holders: []int{100}},
		{name: "abandoned while queued: forgotten", c: a, at: t0,
			prepare: func(l *ledger) {
				l.record(a, stQueued, btime)
				l.abandon(a.Key())
			},
			want: sight{handle: true}},
		{name: "abandon leaves a rescued inode", c: a, at: t0,
			prepare: func(l *ledger) {
				l.record(a, stRescued, btime)
				l.abandon(a.Key())
			},
			want: sight{}, holders: []int{100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := t0
			l := testLedger(t, &clock)
			tt.prepare(l)
			got := l.see(tt.c, tt.at)
			if got.check != (got.entry != nil) {
				t.Fatalf("check %v with entry %p", got.check, got.entry)
			}
			entry := got.entry
			got.entry = nil
			if got != tt.want {
				t.Errorf("see:\n-want %+v\n+got  %+v", tt.want, got)
			}
			if got.check {
				if c := l.confirm(tt.c, entry, tt.btime, tt.at); c != tt.confirm {
					t.Errorf("confirm(btime %d):\n-want %+v\n+got  %+v", tt.btime, tt.confirm, c)
				}
			}
			if got := sorted(l.holders(tt.c.Key())); !slices.Equal(got, tt.holders) {
				t.Errorf("holders:\n-want %v\n+got  %v", tt.holders, got)
			}
		})
	}
}

// TestLedgerConfirmReplaced: an entry forgotten or replaced between see
// and confirm is not resurrected: the candidate is handled afresh.
func TestLedgerConfirmReplaced(t *testing.T) {
	clock := time.Unix(1_000_000, 0)
	l := testLedger(t, &clock)
	a, b := cand(100, 7, 5), cand(200, 9, 5)
	l.record(a, stRescued, 42)
	s := l.see(b, clock)
	if !s.check {
		t.Fatalf("see = %+v, want check", s)
	}
	clock = clock.Add(time.Second)
	l.forget(clock)
	if got := l.confirm(b, s.entry, 42, clock); got != (sight{handle: true}) {
		t.Errorf("confirm after the entry went = %+v, want handle", got)
	}
	if n := l.len(); n != 0 {
		t.Errorf("%d entries, want 0: confirm brought the old one back", n)
	}
}

// TestLedgerForget: a full sweep that started at start drops what it did
// not see: inodes (unless queued) and holders.
func TestLedgerForget(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	start := t0.Add(10 * time.Second)
	tests := []struct {
		name    string
		st      state
		seenBy  []*scanner.Candidate // looked at again after start
		holders []int                // nil: entry dropped
	}{
		{"rescued, not seen again", stRescued, nil, nil},
		{"queued, not seen again: kept, holders dropped", stQueued, nil, []int{}},
		{"rescued, one holder seen again", stRescued, []*scanner.Candidate{cand(100, 7, 5)}, []int{100}},
		{"reported, the other holder seen again", stReported, []*scanner.Candidate{cand(200, 9, 5)}, []int{200}},
		{"failed, both seen again", stFailed, []*scanner.Candidate{cand(100, 7, 5), cand(200, 9, 5)}, []int{100, 200}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := t0
			l := testLedger(t, &clock)
			a, b := cand(100, 7, 5), cand(200, 9, 5)
			l.record(a, tt.st, 42)
			l.record(b, tt.st, 42)
			clock = start.Add(time.Millisecond)
			for _, c := range tt.seenBy {
				l.see(c, start)
			}
			l.forget(start)
			got := l.holders(a.Key())
			if tt.holders == nil {
				if n := l.len(); n != 0 {
					t.Errorf("%d entries left, want the inode forgotten", n)
				}
				return
			}
			if n := l.len(); n != 1 {
				t.Fatalf("%d entries left, want 1", n)
			}
			if got := sorted(got); !slices.Equal(got, tt.holders) && !(len(got) == 0 && len(tt.holders) == 0) {
				t.Errorf("holders:\n-want %v\n+got  %v", tt.holders, got)
			}
		})
	}
}

// TestLedgerReconsider: a reload forgets what new rules may decide
// otherwise and keeps what must not be repeated.
func TestLedgerReconsider(t *testing.T) {
	clock := time.Unix(1_000_000, 0)
	l := testLedger(t, &clock)
	keep := map[state]bool{stQueued: true, stRescued: true, stReported: true,
		stSkipped: false, stFailed: false, stIgnored: false, stNoSpace: false}
	for st := range keep {
		l.record(cand(100, 7, uint64(st)+1), st, 42)
	}
	l.reconsider()
	for st, want := range keep {
		if got := l.holders(cand(100, 7, uint64(st)+1).Key()) != nil; got != want {
			t.Errorf("state %d kept %v, want %v", st, got, want)
		}
	}
}
