package daemon

import (
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/logging"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// state of one inode the daemon has seen.
type state int

const (
	stQueued   state = iota // pinned, waiting for or under rescue (or follow)
	stRescued               // rescued; never again while it stays open
	stReported              // report rule: logged once
	stSkipped               // policy said no: logged once
	stFailed                // rescue failed: retried with a backoff (see retryBackoff)
	stIgnored               // no rule matches
	stNoSpace               // did not fit: retried once the destination has the room (see spaceWait)
)

type inode struct {
	st       state
	seen     time.Time              // last sweep that showed it
	btime    int64                  // birth time (ns), 0 where the filesystem has none
	holders  map[holderID]time.Time // when each was last seen
	failures int                    // failed attempts so far
	retryAt  time.Time              // stFailed: sweeps from then on try again
	space    spaceWait              // stNoSpace: what the copy waits for
}

// spaceWait is what a file that did not fit waits for: need bytes free in
// root above min.
type spaceWait struct {
	root      string
	need, min uint64
}

// retryDue reports whether a failed rescue of in may be tried again by a
// sweep that started at now.
func (in *inode) retryDue(now time.Time) bool {
	return in.st == stFailed && !now.Before(in.retryAt)
}

// failed records a failed attempt made for the sweep that started at
// found. The next is due a backoff after that sweep, less half an
// interval so that the periodic sweep due then is not missed by a hair.
func (in *inode) failed(found time.Time, interval time.Duration) {
	in.st = stFailed
	in.failures++
	in.retryAt = found.Add(retryBackoff(in.failures, interval) - interval/2)
}

// retryBackoff is the wait before the attempt after the nth failure: one
// sweep interval, doubling with each failure up to MaxRetryBackoff (or the
// interval, if longer). A failure may be transient (ENOSPC, a destination
// being repaired) and the data lives only as long as its holder, so
// retrying is worth it; the backoff keeps a lasting cause from costing a
// rescue attempt and an error event on every sweep.
func retryBackoff(n int, interval time.Duration) time.Duration {
	limit := max(MaxRetryBackoff, interval)
	b := interval
	for i := 1; i < n && b < limit; i++ {
		b *= 2
	}
	return min(b, limit)
}

// holderID names a process across pid reuse.
type holderID struct {
	pid   int
	start uint64
}

// ledger is what the daemon knows of every deleted inode it has seen: its
// state, its holders, its birth time, its failed attempts and their
// backoff. It decides whether a candidate needs handling (see) and keeps
// each inode's outcome, so that a file is rescued or reported once. It
// makes no system call: a birth time it needs is read by the caller
// (confirm). Safe for concurrent use: sweeps feed it, workers record
// outcomes, reload and the full pass prune it.
type ledger struct {
	log *zap.Logger
	now func() time.Time // when a candidate is looked at; time.Now but in tests

	mu     sync.Mutex // guards inodes and every *inode in it
	inodes map[scanner.Key]*inode
}

func newLedger(log *zap.Logger) *ledger {
	return &ledger{log: log, now: time.Now, inodes: make(map[scanner.Key]*inode)}
}

// sight is what the ledger says of a candidate.
type sight struct {
	handle   bool // handle it: new, due for a retry, or to be matched again
	retry    bool // a failed rescue is due again
	failures int  // failed attempts so far (with retry)
	// wait is set for a file that did not fit: it is handled once its
	// destination has room again (the caller asks statfs), not otherwise.
	wait bool
	spaceWait
	// check: a holder not seen with the inode before. Inode numbers are
	// reused once a file is freed, so the caller reads the candidate's
	// birth time (statx(2) STATX_BTIME) and asks confirm, with entry.
	check bool
	entry *inode
}

// see looks c up for the sweep that started at now. A known inode only
// gains c's holder, unless its failed rescue is due again, its file waits
// for room, or c's holder was not seen with it before (check).
func (l *ledger) see(c *scanner.Candidate, now time.Time) sight {
	hid := holderID{pid: c.PID, start: c.StartTime}
	l.mu.Lock()
	defer l.mu.Unlock()
	in, known := l.inodes[c.Key()]
	if !known {
		return sight{handle: true}
	}
	// When it was looked at, not when its sweep started: a full pass
	// runs beside targeted sweeps, and forget must not drop what one of
	// them saw after the pass had read that process.
	in.seen = l.now()
	_, same := in.holders[hid]
	if !same && in.st != stQueued {
		return sight{check: true, entry: in}
	}
	// A pinned inode cannot be freed, so its number cannot have been
	// reused: another descriptor of the same file.
	if !same {
		l.log.Debug("pinned inode, new holder", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD))
	}
	in.holders[hid] = l.now()
	return in.sightLocked(now, false)
}

// confirm finishes see for a holder not seen with entry before, given the
// birth time of c's file: the same file joins entry's holders (and an
// inode no rule matched is matched again, for this holder); another file
// under a reused number replaces the entry.
func (l *ledger) confirm(c *scanner.Candidate, entry *inode, btime int64, now time.Time) sight {
	key := c.Key()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inodes[key] != entry {
		return sight{handle: true} // forgotten or replaced meanwhile
	}
	l.log.Debug("known inode, new holder", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD),
		zap.Bool("same_file", entry.btime == btime), zap.Int("state", int(entry.st)))
	if entry.btime != btime {
		delete(l.inodes, key)
		return sight{handle: true}
	}
	entry.holders[holderID{pid: c.PID, start: c.StartTime}] = l.now()
	// No rule matched the inode for its other holders, but the rules
	// may for this one (commands, users); and a sweep's look is no proof
	// that no rule wants the inode: a holder flipping a descriptor can
	// make a sweep pair this inode with another file's name. Matching
	// again costs only the globs.
	return entry.sightLocked(now, entry.st == stIgnored)
}

func (in *inode) sightLocked(now time.Time, again bool) sight {
	s := sight{retry: in.retryDue(now), failures: in.failures}
	if in.st == stNoSpace {
		s.wait, s.spaceWait = true, in.space
		return s
	}
	s.handle = s.retry || again
	return s
}

// record sets the state of c's inode, creating its entry (with btime, the
// birth time of its file) if there is none, and adds c's holder.
func (l *ledger) record(c *scanner.Candidate, st state, btime int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recordLocked(c, st, btime)
}

// recordFailure records a failed attempt at c's inode, made for the sweep
// that started at found (see inode.failed).
func (l *ledger) recordFailure(c *scanner.Candidate, found time.Time, interval time.Duration, btime int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recordLocked(c, stFailed, btime).failed(found, interval)
}

func (l *ledger) recordLocked(c *scanner.Candidate, st state, btime int64) *inode {
	in, ok := l.inodes[c.Key()]
	if !ok {
		in = &inode{holders: make(map[holderID]time.Time), btime: btime}
		l.inodes[c.Key()] = in
	}
	at := l.now() // see see
	in.st, in.seen = st, at
	in.holders[holderID{pid: c.PID, start: c.StartTime}] = at
	return in
}

// finish records the outcome of the rescue of key's inode, found by the
// sweep that started at found: stFailed starts or extends its backoff.
func (l *ledger) finish(key scanner.Key, st state, found time.Time, interval time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if in, ok := l.inodes[key]; ok {
		if st == stFailed {
			in.failed(found, interval)
		} else {
			in.st = st
		}
	}
}

// noSpace records that key's file did not fit: it waits for w.
func (l *ledger) noSpace(key scanner.Key, w spaceWait) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if in, ok := l.inodes[key]; ok {
		in.st, in.space = stNoSpace, w
	}
}

// abandon forgets key's inode if it is still queued (its job was given up
// at shutdown), so that nothing about it holds if it is looked at again.
func (l *ledger) abandon(key scanner.Key) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if in, ok := l.inodes[key]; ok && in.st == stQueued {
		delete(l.inodes, key)
	}
}

// forget drops what the full sweep that started at start no longer
// showed: inodes closed by every holder (their numbers may be reused) and
// holders that closed theirs or exited (their pids may be reused). Inodes
// still queued keep their entry.
func (l *ledger) forget(start time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, in := range l.inodes {
		if in.st != stQueued && in.seen.Before(start) {
			delete(l.inodes, k)
			continue
		}
		for h, t := range in.holders {
			if t.Before(start) {
				delete(in.holders, h)
			}
		}
	}
}

// reconsider forgets the inodes that new rules may decide otherwise:
// skipped, failed, unmatched and waiting for room. Reported files stay
// reported: their event is not repeated.
func (l *ledger) reconsider() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, in := range l.inodes {
		if in.st == stSkipped || in.st == stFailed || in.st == stIgnored || in.st == stNoSpace {
			delete(l.inodes, k)
		}
	}
}

// holders returns the pids known to hold key's inode.
func (l *ledger) holders(key scanner.Key) []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var pids []int
	if in, ok := l.inodes[key]; ok {
		for hid := range in.holders {
			pids = append(pids, hid.pid)
		}
	}
	return pids
}

// len returns the number of inodes known.
func (l *ledger) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.inodes)
}
