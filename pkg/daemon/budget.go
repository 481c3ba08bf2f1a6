package daemon

import (
	"sync"

	"github.com/relinkd/relinkd/pkg/metrics"
)

// budget bounds what the daemon holds at once: pins (each an open
// descriptor keeping a deleted inode's data alive) and their total size,
// and follows (each a pin, a copy and a goroutine for as long as its
// writer lives). A file that finds no pin is deferred: its holder is
// swept again as soon as a pin is released (room). Each budget is said
// once per burst. Safe for concurrent use: sweeps take pins, workers and
// follows give them back.
type budget struct {
	maxPins    int
	maxBytes   int64
	maxFollows int
	m          *metrics.Metrics // pins_held and pinned_bytes, set under mu at every change

	// room gets a token when a pin is released while files are
	// deferred; the main loop sweeps their holders then.
	room chan struct{}

	mu            sync.Mutex // guards the fields below
	pins          int
	pinned        int64
	deferred      map[int]struct{} // pids whose files found no pin
	pinsWarned    bool             // the pin budget was said in this burst
	follows       int              // follows running
	followsWarned bool             // the follow budget was said in this burst
}

func newBudget(maxPins int, maxBytes int64, maxFollows int, m *metrics.Metrics) *budget {
	return &budget{maxPins: maxPins, maxBytes: maxBytes, maxFollows: maxFollows, m: m,
		room: make(chan struct{}, 1), deferred: make(map[int]struct{})}
}

// full is what check says of a file beyond the pin budget.
type full struct {
	budget string // "pins" or "pinned_bytes"
	pins   int
	pinned int64
	warn   bool // first in its burst: say so
}

// check reports whether a file of size bytes held by pid fits the pin
// budget now. One that does not is deferred: its holder is swept again as
// soon as a pin is released. It takes nothing: take does, once pinned.
func (b *budget) check(pid int, size int64) (full, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pins < b.maxPins && b.pinned+size <= b.maxBytes {
		return full{}, true
	}
	b.deferred[pid] = struct{}{}
	f := full{budget: "pins", pins: b.pins, pinned: b.pinned, warn: !b.pinsWarned}
	if b.pins < b.maxPins {
		f.budget = "pinned_bytes"
	}
	b.pinsWarned = true
	return f, false
}

// take counts a pin of size bytes.
func (b *budget) take(size int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pins++
	b.pinned += size
	b.setLocked()
}

// give takes a released pin of size bytes off the counts, and wakes the
// main loop (room) if files wait for one.
func (b *budget) give(size int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pins--
	b.pinned -= size
	b.setLocked()
	if len(b.deferred) > 0 {
		b.signal()
	}
}

// released delivers a token when a pin was released while files were
// deferred (see room).
func (b *budget) released() <-chan struct{} { return b.room }

// signal puts a token in room unless one waits there already.
func (b *budget) signal() {
	select {
	case b.room <- struct{}{}:
	default:
	}
}

func (b *budget) setLocked() {
	b.m.PinsHeld.Set(float64(b.pins))
	b.m.PinnedBytes.Set(float64(b.pinned))
}

// takeDeferred returns the pids whose files waited for a pin. With none,
// it ends the burst: released reports whether the pin budget had been
// reached in it (and pins what is held now).
func (b *budget) takeDeferred() (pids []int, released bool, pins int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	pids = make([]int, 0, len(b.deferred))
	for pid := range b.deferred {
		pids = append(pids, pid)
	}
	clear(b.deferred)
	if len(pids) == 0 && b.pinsWarned {
		b.pinsWarned = false
		return pids, true, b.pins
	}
	return pids, false, b.pins
}

// startFollow takes a follow from the budget if there is one left. When
// there is none, warn is set for the first refusal of the burst.
func (b *budget) startFollow() (ok, warn bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.follows >= b.maxFollows {
		warn = !b.followsWarned
		b.followsWarned = true
		return false, warn
	}
	b.follows++
	return true, false
}

// endFollow gives a follow back; the last one ends the burst.
func (b *budget) endFollow() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.follows--
	if b.followsWarned && b.follows == 0 {
		b.followsWarned = false
	}
}
