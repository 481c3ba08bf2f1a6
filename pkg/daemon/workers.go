package daemon

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/fsguard"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/relink"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// job is one pinned file waiting for a worker.
type job struct {
	c     scanner.Candidate // the pinned file (pin.Candidate())
	rule  config.Rule       // the rule that matched it, once pinned
	pin   *relink.Pin
	found time.Time // start of the sweep that found it
	prior *prior    // a follow an earlier daemon left unfinished: resume it (see resume)
}

// workers is the pool of rescue workers: the queue of pinned files, one
// slot per worker started, and the stall watch that replaces a worker
// stuck in a filesystem that stopped answering. Safe for concurrent use;
// mu guards slots, stalled and each slot's release.
type workers struct {
	log   *zap.Logger
	guard *fsguard.Guard // marks the mount of a stalled rescue unresponsive
	stall time.Duration  // Options.StallTimeout
	// do handles one job (rescue or resume, with progress as its sign of
	// life); abandon releases one taken after shutdown began.
	do      func(ctx context.Context, j *job, wg *sync.WaitGroup, progress func())
	abandon func(j *job)

	// jobs never blocks a sender: it has room for every pin the budget
	// allows (MaxPins), and only pinned files are queued.
	jobs chan *job

	mu      sync.Mutex // guards the fields below
	slots   []*slot    // one per worker started, stalled ones included
	stalled int        // workers replaced because they were stuck
}

// slot is what the stall watch knows of one worker.
type slot struct {
	mnt     atomic.Int64 // mount of the file under rescue
	busy    atomic.Int64 // unix ns of the last sign of life; 0 when idle
	retired atomic.Bool  // replaced: exits after its job
	release func()       // set (under workers.mu) when retired: clears the mount's mark
}

func (s *slot) touch() { s.busy.Store(time.Now().UnixNano()) }

// queue hands a pinned file to the workers; it never blocks (see jobs).
func (w *workers) queue(j *job) { w.jobs <- j }

// drain abandons every job still queued (at shutdown, once the workers
// stopped).
func (w *workers) drain() {
	for {
		select {
		case j := <-w.jobs:
			w.abandon(j)
		default:
			return
		}
	}
}

// start starts a worker with a slot of its own.
func (w *workers) start(ctx context.Context, wg *sync.WaitGroup) {
	s := &slot{}
	w.mu.Lock()
	w.slots = append(w.slots, s)
	w.mu.Unlock()
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.work(ctx, wg, s)
	}()
}

// watchStalls retires a worker whose rescue has made no progress for
// StallTimeout: a read or write in a filesystem that stopped answering
// never returns, and the thread cannot be taken back. The file's mount is
// marked unresponsive (its other files are skipped until the call
// returns) and a new worker takes the stuck one's place, up to
// maxStalledWorkers.
func (w *workers) watchStalls(ctx context.Context, wg *sync.WaitGroup) {
	t := time.NewTicker(min(time.Second, w.stall/4))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now().UnixNano()
		w.mu.Lock()
		var stuck []*slot
		for _, s := range w.slots {
			if b := s.busy.Load(); b != 0 && !s.retired.Load() && now-b > int64(w.stall) {
				s.retired.Store(true)
				stuck = append(stuck, s)
			}
		}
		w.mu.Unlock()
		for _, s := range stuck {
			mnt := int(s.mnt.Load())
			rel := w.guard.Hold(mnt)
			w.mu.Lock()
			s.release = rel
			replace := w.stalled < maxStalledWorkers
			if replace {
				w.stalled++
			}
			w.mu.Unlock()
			w.log.Warn("rescue stalled", zap.Int("mnt_id", mnt), zap.Duration("no_progress_for", w.stall),
				zap.Bool("replaced", replace))
			if replace {
				w.start(ctx, wg)
			}
		}
	}
}

// work rescues queued pins until ctx ends, or until it was found stuck
// and replaced.
func (w *workers) work(ctx context.Context, wg *sync.WaitGroup, s *slot) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-w.jobs:
			// select picks at random among ready cases: a job taken
			// after shutdown began is released, not started only to
			// be cancelled.
			if ctx.Err() != nil {
				w.abandon(j)
				return
			}
			s.mnt.Store(int64(j.c.MntID))
			s.touch()
			w.do(ctx, j, wg, s.touch)
			s.busy.Store(0)
			if s.retired.Load() {
				w.mu.Lock()
				rel := s.release
				w.mu.Unlock()
				if rel != nil {
					rel()
				}
				w.log.Info("stalled rescue returned", zap.Int("mnt_id", j.c.MntID))
				return
			}
		}
	}
}
