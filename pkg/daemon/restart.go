package daemon

// Restarts. A daemon that is restarted (an upgrade, systemctl restart, the
// watchdog's SIGKILL) finds the files the previous one rescued still held
// open, with nothing in memory to say so. Without more it would copy each
// again at every start. What it needs is kept beside each rescued file, in
// its sidecar (relink.Sidecar): the source's dev, ino and birth time, the
// rescued file's own inode, and whether a follow was in progress.
//
// At the first full sweep, before any candidate is handled, the daemon
// reads the sidecars of every rescue root it knows (mounts.Host.KnownRoots:
// the configured directories and the fs_dir root of every host mount) with
// retention's walk, which never follows a symlink, and keeps those whose
// source is among the sweep's candidates, once checked against the file
// beside them. A candidate whose pinned inode has the same dev, ino and
// birth time is recorded as rescued without a copy ("already rescued",
// once per inode); one whose sidecar says a follow was in progress is
// adopted (relink.Engine.Adopt) and followed on into the same file. The
// index only shrinks: each full sweep drops what it did not see held.

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/logging"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/policy"
	"github.com/relinkd/relinkd/pkg/relink"
	"github.com/relinkd/relinkd/pkg/retention"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// priorTimeout bounds how long start-up waits for the rescue roots'
// sidecars: a root on a hung filesystem must not keep the daemon from
// rescuing. A root not read in time is given up (its files may be copied
// again), the others still count.
const priorTimeout = 5 * time.Second

// prior is a rescue made before this daemon started, from its sidecar.
type prior struct {
	root, via, rel string // where the rescued file was found
	side           relink.Sidecar
}

func (p *prior) rescuedTo() string { return p.root + "/" + p.rel }

// priors is the index of the rescues made before this start whose source
// is still held, by the source's inode. It only shrinks once loaded. Safe
// for concurrent use; mu guards byKey. loaded is the first full sweep's:
// read and set under Daemon.considerMu.
type priors struct {
	mu     sync.Mutex
	byKey  map[scanner.Key][]*prior
	loaded bool
}

// load marks the index loaded and reports whether it was not before
// (the first full sweep loads it).
func (x *priors) load() bool {
	first := !x.loaded
	x.loaded = true
	return first
}

func (x *priors) set(index map[scanner.Key][]*prior) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.byKey = index
}

// loadPrior reads the sidecars of every known rescue root and keeps those
// whose source is one of cands (nothing else can matter: a file not held
// now is never held again). It runs once, at the first full sweep.
func (d *Daemon) loadPrior(ctx context.Context, cands []scanner.Candidate) {
	want := make(map[scanner.Key]bool, len(cands))
	for i := range cands {
		want[cands[i].Key()] = true
	}
	if len(want) == 0 {
		return
	}
	start := time.Now()
	pol := d.pol.Load()
	deadline := time.NewTimer(priorTimeout)
	defer deadline.Stop()

	listed := make(chan []string, 1)
	go func() {
		roots, err := pol.Host().KnownRoots()
		if err != nil {
			d.log.Debug("rescue roots on the host's mounts not listed", zap.Error(err))
		}
		listed <- roots
	}()
	var roots []string
	select {
	case roots = <-listed:
	case <-deadline.C:
		d.log.Warn("rescue roots not listed in time; files rescued before this start may be rescued again",
			zap.Duration("waited", priorTimeout))
		return
	case <-ctx.Done():
		return
	}

	type result struct {
		root  string
		found []*prior
		err   error
	}
	// Buffered for every root: a reader that finishes after the deadline
	// must not block.
	results := make(chan result, len(roots))
	for _, root := range roots {
		go func() {
			found, err := d.readPrior(pol, root, want)
			results <- result{root, found, err}
		}()
	}
	index := make(map[scanner.Key][]*prior)
	pending := slices.Clone(roots)
	n := 0
wait:
	for len(pending) > 0 {
		select {
		case r := <-results:
			pending = slices.DeleteFunc(pending, func(s string) bool { return s == r.root })
			if r.err != nil {
				d.log.Warn("sidecars not read", zap.String("root", r.root), zap.Error(r.err))
			}
			for _, p := range r.found {
				k := scanner.Key{Dev: p.side.Dev, Ino: p.side.Ino}
				index[k] = append(index[k], p)
				n++
			}
		case <-deadline.C:
			d.log.Warn("rescue roots not read in time; files rescued there before this start may be rescued again",
				zap.Strings("roots", pending), zap.Duration("waited", priorTimeout))
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	d.priors.set(index)
	d.log.Debug("rescues before this start", zap.Int("roots", len(roots)), zap.Int("held", n),
		zap.Duration("duration", time.Since(start)))
}

// readPrior reads root's sidecars and returns the trustworthy ones whose
// source is in want. Every sidecar left out for a fault of its own is a
// debug event; one that is fine but describes a file not held now is
// left out silently.
func (d *Daemon) readPrior(pol *policy.Policy, root string, want map[scanner.Key]bool) ([]*prior, error) {
	var found []*prior
	err := retention.Sidecars(pol.Host().Via(), root, func(f retention.SidecarFile) {
		ignore := func(err error) {
			d.log.Debug("sidecar ignored", zap.String("root", f.Root), logging.Path("rescued_to", []byte(f.Root+"/"+f.Rel)),
				zap.Error(err))
		}
		if f.Err != nil {
			ignore(f.Err)
			return
		}
		s, err := relink.ParseSidecar(f.Data)
		if err != nil {
			ignore(err)
			return
		}
		if !want[scanner.Key{Dev: s.Dev, Ino: s.Ino}] {
			return
		}
		if err := s.Describes(f.Dev, f.Ino, f.Size, f.BirthTime); err != nil {
			ignore(err)
			return
		}
		if s.BirthTime == 0 {
			// Without a birth time the same file cannot be told from a
			// later one with its inode number: rescue again.
			ignore(errors.New("no birth time recorded for the source (its filesystem has none)"))
			return
		}
		found = append(found, &prior{root: f.Root, via: pol.Host().Via(), rel: f.Rel, side: s})
	})
	return found, err
}

// keep drops the earlier rescues whose source the full sweep that found
// cands did not see held: its inode was freed, its number may go to
// another file.
func (x *priors) keep(cands []scanner.Candidate) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if len(x.byKey) == 0 {
		x.byKey = nil
		return
	}
	held := make(map[scanner.Key]bool, len(cands))
	for i := range cands {
		held[cands[i].Key()] = true
	}
	for k := range x.byKey {
		if !held[k] {
			delete(x.byKey, k)
		}
	}
}

// find takes the earlier rescue of the inode key born at btime out of
// the index (so that it is used once): the newest one, if several
// describe it. A zero btime matches nothing.
func (x *priors) find(key scanner.Key, btime int64) *prior {
	if btime == 0 {
		return nil
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	var best *prior
	for _, p := range x.byKey[key] {
		if p.side.BirthTime == btime && (best == nil || p.side.Time.After(best.side.Time)) {
			best = p
		}
	}
	if best != nil {
		delete(x.byKey, key)
	}
	return best
}

// takePrior handles a pinned candidate that an earlier daemon rescued:
// it reports whether it did. A finished rescue is recorded as rescued,
// without a copy, and the pin released; an unfinished follow is queued to
// be resumed (see resume), still pinned.
func (d *Daemon) takePrior(c *scanner.Candidate, rule config.Rule, pin *relink.Pin, btime int64, now time.Time) bool {
	p := d.priors.find(c.Key(), btime)
	if p == nil {
		return false
	}
	if p.side.Following && d.config().Rescue.Follow {
		d.ledger.record(c, stQueued, btime)
		d.budget.take(max(c.Size, 0))
		// Never blocks: the queue has room for MaxPins jobs.
		d.workers.queue(&job{c: *c, rule: rule, pin: pin, found: now, prior: p})
		return true
	}
	if err := pin.Close(); err != nil {
		d.log.Warn("release pin", zap.Int("pid", c.PID), zap.Int("fd", c.FD), zap.Error(err))
	}
	d.ledger.record(c, stRescued, btime)
	d.ev.AlreadyRescued(c, p.rescuedTo(), string(p.side.Method), false)
	return true
}

// resume continues the follow of a job whose file an earlier daemon
// rescued and was still following when it ended: the pipeline adopts the
// rescued file ("already rescued") and the follow appends to it from its
// current size. If the rescued file cannot be adopted (removed, replaced,
// unsafe), the data still matters more than a duplicate: the file is
// rescued anew.
func (d *Daemon) resume(ctx context.Context, j *job, wg *sync.WaitGroup, progress func()) {
	p := j.prior
	j.prior = nil
	c := &j.c
	rs, err := d.pipe.Adopt(j.pin, relink.Adoption{Root: p.root, Via: p.via, Rel: p.rel, Sidecar: p.side, Progress: progress})
	if err != nil {
		d.log.Warn("follow not resumed; rescuing again", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD),
			logging.Path("rescued_to", []byte(p.rescuedTo())), zap.Error(err))
		d.rescue(ctx, j, wg, progress)
		return
	}
	d.follow(ctx, j, rs, wg)
}
