package daemon

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/pkg/scanner"
	"github.com/relinkd/relinkd/pkg/watch"
)

// maxNewPIDs bounds the range of pids probed one by one from
// /proc/loadavg; past it (a fork-heavy host) the listing of /proc gives
// the new processes.
const maxNewPIDs = 128

// A new process stays "young" for youngTTL after it is first seen: every
// event round sweeps it again. A program spends its first milliseconds
// starting up, and in a fork storm a sibling's unlink starts the round
// that first sees it before it has deleted anything. At most maxYoung are
// kept, the newest; older processes are left to the pids known to have
// held files in the directory and to the full pass.
const (
	youngTTL = 2 * time.Second
	maxYoung = 256
)

// scheduler decides which processes an event's sweep looks at first, and
// when the next pass over every process runs: the pid hints (who held
// deleted files in which directory, the holder index of every file in the
// watched trees, the young processes, the listing of /proc last seen),
// the directories where files were created since the last full pass, the
// overflows not yet handled, and the full pass asked for or deferred.
//
// The hints are shared by the main loop and the full-pass goroutine (mu
// guards them; the holder index has its own lock); the event state is
// the main loop's alone.
type scheduler struct {
	proc    procfs.FS
	self    int // the daemon's pid: never swept
	views   *views
	holders *holderIndex
	now     func() time.Time // time.Now but in tests

	lastFull atomic.Int64  // unix ns of the start of the last pass over every process
	fullReq  chan struct{} // asks the full-pass goroutine for a pass

	mu       sync.Mutex                   // guards the fields below
	dirPIDs  map[string]map[int]time.Time // dir of a deleted file -> pids seen holding it
	knownPID map[int]struct{}             // pids listed at the last full sweep
	lastPID  int                          // the newest pid at the last look
	young    map[int]time.Time            // new processes, when first seen (see youngTTL)

	// The main loop's only.
	fullDeferred bool                 // an event round left its full pass for later
	created      map[string]time.Time // watched directories where files were created, when last
	createdNew   bool                 // files were created since the loop last asked for a pass
	overflows    int                  // inotify queue overflows not yet handled
}

func newScheduler(proc procfs.FS, self int, v *views) *scheduler {
	return &scheduler{
		proc: proc, self: self, views: v, holders: newHolderIndex(maxHolderPairs), now: time.Now,
		fullReq:  make(chan struct{}, 1),
		dirPIDs:  make(map[string]map[int]time.Time),
		knownPID: make(map[int]struct{}),
		young:    make(map[int]time.Time),
		created:  make(map[string]time.Time),
	}
}

// lastFullAt is the start of the last pass over every process.
func (s *scheduler) lastFullAt() time.Time { return time.Unix(0, s.lastFull.Load()) }

// fullDone records a pass over every process that started at start (the
// full-pass goroutine's).
func (s *scheduler) fullDone(start time.Time) {
	s.lastFull.Store(start.UnixNano())
}

// requestFull asks the full-pass goroutine for a pass; one asked for
// already and not started yet covers this one too. Main loop only.
func (s *scheduler) requestFull() {
	s.fullDeferred = false
	select {
	case s.fullReq <- struct{}{}:
	default:
	}
}

// fullRequests delivers the passes asked for, to the full-pass goroutine.
func (s *scheduler) fullRequests() <-chan struct{} { return s.fullReq }

// swept replaces what the holder index knows of pids with what a sweep of
// them saw, and drops the hints about the processes it found gone: on a
// host where holders come and go, an event's round would otherwise sweep
// every dead one seen in that directory until the next full pass.
func (s *scheduler) swept(pids []int, res *scanner.Result) {
	s.holders.update(pids, res.Held)
	if len(res.Gone) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, pid := range res.Gone {
		delete(s.young, pid)
	}
	for dir, m := range s.dirPIDs {
		for _, pid := range res.Gone {
			delete(m, pid)
		}
		if len(m) == 0 {
			delete(s.dirPIDs, dir)
		}
	}
}

// sweptAll installs what a full sweep saw in the holder index; capped
// reports that the index's bound cut it (pairs: what it holds).
func (s *scheduler) sweptAll(held []scanner.Held) (pairs int, capped bool) {
	s.holders.replace(held)
	return s.holders.size()
}

// deferFull leaves the full pass to the end of the gap. Main loop only.
func (s *scheduler) deferFull() { s.fullDeferred = true }

// fullPending reports whether a full pass was deferred. Main loop only.
func (s *scheduler) fullPending() bool { return s.fullDeferred }

// roundDone records an event round that swept every process, starting at
// start: it counts as the full pass, deferred or not. Main loop only.
func (s *scheduler) roundDone(start time.Time) {
	s.fullDone(start)
	s.fullDeferred = false
}

// fullGap is the least time between two full passes over every process
// that events trigger: a tenth of scan.interval, within 1 to 5 seconds. A
// directory with constant churn would otherwise cost one full sweep per
// event; within the gap an event round sweeps only the likely holders
// (new processes and those seen in the same directories) and the full pass
// follows when the gap has passed.
func fullGap(interval time.Duration) time.Duration {
	return min(max(time.Second, interval/10), 5*time.Second)
}

// notePID remembers that c's holder had a deleted file in its directory.
func (s *scheduler) notePID(c *scanner.Candidate) {
	dir := parentDir(c.Path)
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.dirPIDs[dir]
	if m == nil {
		m = make(map[int]time.Time)
		s.dirPIDs[dir] = m
	}
	m[c.PID] = s.now() // see ledger.see
}

// forget drops the pid hints that the full sweep that started at start
// no longer showed, and makes listed (its listing of /proc) the reference
// for the processes that are new.
func (s *scheduler) forget(start time.Time, listed []int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for dir, m := range s.dirPIDs {
		for pid, t := range m {
			if t.Before(start) {
				delete(m, pid)
			}
		}
		if len(m) == 0 {
			delete(s.dirPIDs, dir)
		}
	}
	s.knownLocked(listed)
}

func (s *scheduler) knownLocked(listed []int) {
	clear(s.knownPID)
	for _, pid := range listed {
		s.knownPID[pid] = struct{}{}
	}
}

// newPIDs returns, newest first, the young processes: those created since
// the previous call, found through /proc/loadavg, which ends with the pid
// most recently allocated (proc(5)); pids are handed out in increasing
// order until they wrap at pid_max. Then those found within youngTTL.
func (s *scheduler) newPIDs() []int {
	last, ok := s.proc.LastPID()
	if !ok {
		return nil
	}
	s.mu.Lock()
	prev := s.lastPID
	s.lastPID = last
	s.mu.Unlock()
	var fresh []int
	switch {
	case prev == 0 || last <= prev:
	case last-prev <= maxNewPIDs:
		fresh = newLeaders(s.proc, prev, last)
	default:
		// More pids handed out since the last look than are worth
		// probing one by one (a fork-heavy host): the listing of /proc,
		// which shows thread-group leaders only, has the new processes
		// above prev; the newest maxYoung of them are kept.
		for _, pid := range listPIDs(s.proc) {
			if pid > prev && pid <= last {
				fresh = append(fresh, pid)
			}
		}
		slices.Sort(fresh)
		fresh = fresh[max(0, len(fresh)-maxYoung):]
	}
	return s.addYoung(fresh)
}

// addYoung makes fresh young and returns every young process, newest
// first (first seen last; the higher pid among those seen at once), at
// most maxYoung of them: those past youngTTL or beyond the bound are
// dropped.
func (s *scheduler) addYoung(fresh []int) []int {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, pid := range fresh {
		s.young[pid] = now
	}
	out := make([]int, 0, len(s.young))
	for pid, at := range s.young {
		if now.Sub(at) > youngTTL {
			delete(s.young, pid)
			continue
		}
		out = append(out, pid)
	}
	slices.SortFunc(out, func(a, b int) int {
		if c := s.young[b].Compare(s.young[a]); c != 0 {
			return c
		}
		return b - a
	})
	for _, pid := range out[min(len(out), maxYoung):] {
		delete(s.young, pid)
	}
	return out[:min(len(out), maxYoung)]
}

// targets returns the descriptors the holder index saw in dirs.
func (s *scheduler) targets(dirs map[string]bool) []scanner.Target { return s.holders.targets(dirs) }

// likelyPIDs returns, newest first and not yet swept, the pids last seen
// under dirs plus those in listed that the previous listing did not have;
// listed becomes the new reference. A nil listed only adds dirs' pids.
func (s *scheduler) likelyPIDs(dirs map[string]bool, listed []int, swept map[int]bool) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := make(map[int]struct{})
	for dir := range dirs {
		for pid := range s.dirPIDs[dir] {
			set[pid] = struct{}{}
		}
		for _, pid := range s.holders.pids(dir) {
			set[pid] = struct{}{}
		}
	}
	for _, pid := range listed {
		if _, ok := s.knownPID[pid]; !ok {
			set[pid] = struct{}{}
		}
	}
	if listed != nil {
		s.knownLocked(listed)
	}
	pids := make([]int, 0, len(set))
	for pid := range set {
		if !swept[pid] && pid != s.self {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	slices.Reverse(pids)
	return pids
}

// drainEvents notes every queued event (see note) and returns how many
// were removals. Main loop only.
func (s *scheduler) drainEvents(events <-chan watch.Event, dirs map[string]bool) int {
	n := 0
	for {
		select {
		case ev := <-events:
			n += s.note(ev, dirs)
		default:
			return n
		}
	}
}

// note adds a removal's directory to dirs and returns 1, or counts an
// overflow or a creation, which are no removal, and returns 0. Main loop
// only.
func (s *scheduler) note(ev watch.Event, dirs map[string]bool) int {
	if ev.Overflow {
		s.overflows++
		return 0
	}
	// A view in another mount namespace: the holders there name the
	// directory as they see it. A directory watched under several names
	// (the host's and a container's view of it) is each of them.
	for _, dir := range append([]string{ev.Dir}, ev.Also...) {
		dir = s.views.viewOf(dir)
		if ev.Created {
			s.created[dir] = ev.At
			s.createdNew = true
			continue
		}
		dirs[dir] = true
	}
	if ev.Created {
		return 0
	}
	return 1
}

// overflowed reports whether overflows wait to be handled. Main loop only.
func (s *scheduler) overflowed() bool { return s.overflows > 0 }

// takeOverflows returns the overflows not yet handled, and clears them.
// Main loop only.
func (s *scheduler) takeOverflows() int {
	n := s.overflows
	s.overflows = 0
	return n
}

// takeCreated reports whether files were created in the watched trees
// since the last call. Main loop only.
func (s *scheduler) takeCreated() bool {
	c := s.createdNew
	s.createdNew = false
	return c
}

// unknownHolders reports whether a file may have been created in one of
// dirs since the last full pass (which started at last), by a process the holder index cannot
// know yet; creations older than that pass are dropped. Main loop only.
func (s *scheduler) unknownHolders(dirs map[string]bool, last time.Time) bool {
	unknown := false
	for dir := range dirs {
		if t, ok := s.created[dir]; ok && !t.Before(last) {
			unknown = true
		}
	}
	for dir, t := range s.created {
		if t.Before(last) {
			delete(s.created, dir)
		}
	}
	return unknown
}

// parentDir returns the directory part of a holder-view path.
func parentDir(p []byte) string {
	s := string(p)
	if i := strings.LastIndexByte(s, '/'); i > 0 {
		return s[:i]
	}
	return "/"
}
