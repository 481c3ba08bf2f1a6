// Package fsguard bounds the time relinkd spends in calls that touch a
// holder's file, filesystem by filesystem.
//
// A FUSE server that stops answering, or a dead NFS server, leaves every
// system call on its files waiting in the kernel, and no signal short of
// SIGKILL (sometimes not even that) gets the thread back. So such calls
// are made on a goroutine of their own and waited for only so long: past
// the deadline the caller goes on without the result, the mount is marked
// unresponsive (one "filesystem unresponsive" event), and later calls on
// it are refused at once until the stuck call returns by itself ("filesystem
// responsive again"). A stuck call holds an OS thread; Guard bounds how
// many may be stuck at once, and past that bound refuses every guarded
// call (ErrTooManyStuck) rather than let the process run out of threads.
package fsguard

import (
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Defaults for Options left zero.
const (
	DefaultTimeout  = 3 * time.Second
	DefaultMaxStuck = 64
)

var (
	// ErrUnresponsive: the file's filesystem did not answer in time, now
	// or in an earlier call that is still stuck.
	ErrUnresponsive = errors.New("filesystem not answering")
	// ErrTooManyStuck: so many calls are stuck in unresponsive filesystems
	// that no new one is started.
	ErrTooManyStuck = errors.New("too many calls stuck in unresponsive filesystems")
)

// Options configure a Guard.
type Options struct {
	Timeout  time.Duration // how long a call may take; 0 means DefaultTimeout
	MaxStuck int           // calls that may be stuck at once; 0 means DefaultMaxStuck
	// Describe names a mount id for the events ("" when unknown).
	Describe func(mntID int) (mountPoint, fsType string)
	// Changed is called when a mount becomes unresponsive or answers
	// again (for metrics); it must not block.
	Changed func(mntID int, unresponsive bool)
}

// Guard runs calls on files of many filesystems. It is safe for
// concurrent use.
type Guard struct {
	opt Options
	log *zap.Logger

	mu     sync.Mutex
	mounts map[int]*stuckMount
	stuck  int  // calls past their deadline, all mounts
	full   bool // ErrTooManyStuck said since stuck last dropped below MaxStuck
}

type stuckMount struct {
	stuck       int // calls on it past their deadline and not returned
	since       time.Time
	point, kind string
}

// New returns a Guard.
func New(opt Options, log *zap.Logger) *Guard {
	if opt.Timeout <= 0 {
		opt.Timeout = DefaultTimeout
	}
	if opt.MaxStuck <= 0 {
		opt.MaxStuck = DefaultMaxStuck
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Guard{opt: opt, log: log, mounts: make(map[int]*stuckMount)}
}

// Timeout is how long a call may take.
func (g *Guard) Timeout() time.Duration { return g.opt.Timeout }

// Unresponsive reports whether calls on mntID are refused now.
func (g *Guard) Unresponsive(mntID int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.mounts[mntID] != nil
}

// Stuck returns how many calls are stuck now.
func (g *Guard) Stuck() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stuck
}

// Do runs fn, which touches a file on the mount mntID, and waits for it
// at most the timeout. It returns ErrUnresponsive at once when the mount
// is marked, or when fn does not return in time: fn then goes on alone,
// and late, if not nil, runs after it (on fn's goroutine) to release what
// fn obtained for a caller who is gone. fn must not share state with the
// caller that the caller uses after Do returns an error.
func (g *Guard) Do(mntID int, fn func(), late func()) error {
	g.mu.Lock()
	switch {
	case g.mounts[mntID] != nil:
		g.mu.Unlock()
		return ErrUnresponsive
	case g.stuck >= g.opt.MaxStuck:
		warn := !g.full
		g.full = true
		g.mu.Unlock()
		if warn {
			g.log.Error("too many calls stuck in unresponsive filesystems; guarded calls refused until some return",
				zap.Int("stuck", g.opt.MaxStuck))
		}
		return ErrTooManyStuck
	}
	g.mu.Unlock()

	done := make(chan struct{})
	var mu sync.Mutex
	abandoned := false
	go func() {
		fn()
		close(done)
		mu.Lock()
		gone := abandoned
		mu.Unlock()
		if gone {
			if late != nil {
				late()
			}
			g.returned(mntID)
		}
	}()
	t := time.NewTimer(g.opt.Timeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
	}
	mu.Lock()
	select {
	case <-done: // returned just now: not stuck after all
		mu.Unlock()
		return nil
	default:
	}
	abandoned = true
	mu.Unlock()
	g.stuckNow(mntID)
	return ErrUnresponsive
}

// stuckNow counts a call on mntID past its deadline.
func (g *Guard) stuckNow(mntID int) {
	g.mu.Lock()
	g.stuck++
	m := g.mounts[mntID]
	first := m == nil
	if first {
		m = &stuckMount{since: time.Now()}
		g.mounts[mntID] = m
	}
	m.stuck++
	g.mu.Unlock()
	if !first {
		return
	}
	if g.opt.Describe != nil {
		m.point, m.kind = g.opt.Describe(mntID)
	}
	if g.opt.Changed != nil {
		g.opt.Changed(mntID, true)
	}
	g.log.Warn("filesystem unresponsive", zap.Int("mnt_id", mntID), zap.String("mountpoint", m.point),
		zap.String("fstype", m.kind), zap.Duration("timeout", g.opt.Timeout),
		zap.String("detail", "its files are skipped until the stuck call returns"))
}

// returned counts a stuck call on mntID that has come back.
func (g *Guard) returned(mntID int) {
	g.mu.Lock()
	g.stuck--
	if g.stuck < g.opt.MaxStuck {
		g.full = false
	}
	m := g.mounts[mntID]
	m.stuck--
	again := m.stuck == 0
	if again {
		delete(g.mounts, mntID)
	}
	g.mu.Unlock()
	if !again {
		return
	}
	if g.opt.Changed != nil {
		g.opt.Changed(mntID, false)
	}
	g.log.Info("filesystem responsive again", zap.Int("mnt_id", mntID), zap.String("mountpoint", m.point),
		zap.String("fstype", m.kind), zap.Duration("unresponsive_for", time.Since(m.since)))
}

// Hold marks mntID unresponsive on behalf of a call that is not run by Do
// but was found stuck by its caller (a copy that stopped making
// progress). The returned release must be called once that call returns.
func (g *Guard) Hold(mntID int) (release func()) {
	g.stuckNow(mntID)
	var once sync.Once
	return func() { once.Do(func() { g.returned(mntID) }) }
}
