package daemon

import (
	"context"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/relinkd/relinkd/pkg/metrics"
	"github.com/relinkd/relinkd/pkg/scanner"
	"github.com/relinkd/relinkd/pkg/watch"
)

// Run runs the daemon until ctx ends, then stops within StopTimeout:
// in-flight copies are cancelled (the engine publishes atomically, so no
// partial file is left) and every pin is released.
func (d *Daemon) Run(ctx context.Context) error {
	cfg := d.config()
	d.log.Info("relinkd started", zap.String("version", d.opt.Version), zap.String("config", d.opt.ConfigPath),
		zap.Duration("interval", time.Duration(cfg.Scan.Interval)), zap.Bool("events", cfg.Scan.Events),
		zap.Int("workers", d.opt.Workers), zap.Int("pid", d.self),
		zap.String("path_resolution", d.engine.Resolution()), zap.String("host_root", hostRoot(d.pol.Load().Host().Via())),
		scanBackend(d.sweeper))

	// Workers get their own context, cancelled only once the loop is done,
	// so that shutdown can first stop detection, then abandon rescues.
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	var wg sync.WaitGroup
	for range d.opt.Workers {
		d.workers.start(wctx, &wg)
	}
	go d.workers.watchStalls(wctx, &wg)

	var srvDone chan error
	if cfg.Metrics.Listen != "" {
		srv, err := metrics.Listen(cfg.Metrics.Listen, d.m.Registry, d.log)
		if err != nil {
			wcancel()
			return err
		}
		d.log.Info("metrics listening", zap.String("listen", srv.Addr()))
		srvDone = make(chan error, 1)
		go func() { srvDone <- srv.Serve(wctx) }()
	}

	events := make(chan watch.Event, 256)
	var watchDone chan error
	if cfg.Scan.Events {
		maxWatches := d.opt.MaxWatches
		if maxWatches <= 0 {
			maxWatches = cfg.Scan.MaxWatches
		}
		w, err := watch.New(watch.Options{
			Roots: watchRoots(cfg), MaxWatches: maxWatches,
			OnChange: func(n int) { d.m.Watches.Set(float64(n)) },
			ProcRoot: d.opt.ProcRoot,
		}, d.log)
		if err != nil {
			// No inotify instance (fs.inotify.max_user_instances): the
			// sweeps still work.
			d.log.Warn("directory events unavailable, relying on sweeps", zap.Error(err))
		} else {
			d.trees.setWatcher(w)
			watchDone = make(chan error, 1)
			go func() { watchDone <- w.Run(wctx, events) }()
			if mc, err := newMountChanges(d.views.procRoot); err != nil {
				d.log.Warn("mount changes in containers' views unavailable; a view is walked only when it is added", zap.Error(err))
			} else {
				d.trees.mounts = mc
				go d.trees.followMounts(wctx)
			}
		}
	}

	wg.Add(1)
	go func() {
		defer wg.Done()
		d.retention.run(wctx)
	}()

	err := d.loop(ctx, events)

	d.log.Info("relinkd stopping")
	d.opt.Notify("STOPPING=1")
	if w := d.trees.watcher(); w != nil {
		w.Close()
	}
	wcancel()
	stopped := make(chan struct{})
	go func() { wg.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(d.opt.StopTimeout):
		d.log.Warn("workers did not stop in time", zap.Duration("waited", d.opt.StopTimeout))
	}
	// Release whatever is still queued.
	d.workers.drain()
	if watchDone != nil {
		if werr := <-watchDone; werr != nil {
			d.log.Warn("watcher", zap.Error(werr))
		}
	}
	if srvDone != nil {
		<-srvDone
	}
	d.sweeper.Close() // the BPF programs, once no sweep uses them
	d.log.Info("relinkd stopped")
	return err
}

// scanBackend names the sweeps' backend in the start-up event:
// scan_backend (bpf or proc) and scan_backend_reason.
func scanBackend(s *scanner.Scanner) zap.Field {
	name, why := s.Backend()
	return zap.Inline(zapcore.ObjectMarshalerFunc(func(enc zapcore.ObjectEncoder) error {
		enc.AddString("scan_backend", name)
		enc.AddString("scan_backend_reason", why)
		return nil
	}))
}

// loop is the detection side: sweeps, events, reloads, watchdog.
func (d *Daemon) loop(ctx context.Context, events <-chan watch.Event) error {
	d.sweep(ctx)
	d.opt.Notify("READY=1")
	go d.fullPasses(ctx)
	go d.namespaces(ctx)

	interval := time.Duration(d.config().Scan.Interval)
	if interval <= 0 {
		interval = 30 * time.Second
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var wd <-chan time.Time
	if d.opt.WatchdogInterval > 0 {
		t := time.NewTicker(d.opt.WatchdogInterval)
		defer t.Stop()
		wd = t.C
		d.opt.Notify("WATCHDOG=1")
	}
	// A full pass that an event round had to defer (see fullGap).
	full := time.NewTimer(time.Hour)
	full.Stop()
	defer full.Stop()
	fullArmed := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			d.sched.requestFull()
		case <-full.C:
			fullArmed = false
			if d.sched.fullPending() {
				d.sched.requestFull()
			}
		case ev := <-events:
			d.onEvents(ctx, ev, events)
			if d.sched.overflowed() {
				d.recoverOverflow(ctx)
			}
			if d.sched.takeCreated() {
				// Whoever created files in the watched trees may be a
				// process the holder index does not know yet: a pass
				// over every process finds it, within the full-pass
				// gap, off the loop.
				if time.Since(d.sched.lastFullAt()) >= fullGap(interval) {
					d.sched.requestFull()
				} else {
					d.sched.deferFull()
				}
			}
			if d.sched.fullPending() && !fullArmed {
				full.Reset(max(time.Millisecond, fullGap(interval)-time.Since(d.sched.lastFullAt())))
				fullArmed = true
			}
		case <-d.budget.released():
			// Pins were released while files waited for one: their
			// holders may not live until the next sweep. A second
			// signal with nothing deferred ends the burst.
			pids, released, pins := d.budget.takeDeferred()
			if released {
				d.log.Info("rescue budget released", zap.Int("pins", pins))
			}
			if len(pids) > 0 {
				d.sweepPIDs(ctx, "deferred", pids, nil)
				d.budget.signal()
			}
		case <-wd:
			d.opt.Notify("WATCHDOG=1")
		case r := <-d.reload:
			d.apply(r.cfg)
			if iv := time.Duration(r.cfg.Scan.Interval); iv > 0 && iv != interval {
				interval = iv
				tick.Reset(interval)
			}
			close(r.done)
		}
	}
}

// fullPasses runs the passes over every process that the loop asks for,
// off the loop: an event's targeted sweep never waits behind one.
func (d *Daemon) fullPasses(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.sched.fullRequests():
			d.sweep(ctx)
		}
	}
}

// nsLook is how often namespaces looks for new mount namespaces. Each look
// wakes the Go runtime's scheduler and monitor: at 250 ms they cost the
// idle daemon 0.2% of a core more than at a second.
const nsLook = time.Second

// namespaces looks for new mount namespaces (containers starting) every
// nsLook, between full passes, and has their views watched; only new
// processes are looked at. It runs off the loop: the look reads /proc and
// may walk new trees, which an event's targeted sweep must not wait for.
func (d *Daemon) namespaces(ctx context.Context) {
	tick := time.NewTicker(nsLook)
	defer tick.Stop()
	last := 0 // the last pid handed out at the previous look
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// No pid handed out since the last look (the last one in
		// /proc/loadavg is the same): no new process, so no new
		// namespace, and no listing of /proc on a quiet host.
		pid, ok := d.proc.LastPID()
		if ok && pid == last {
			continue
		}
		// A few pids handed out: each is probed (a readlink of its
		// ns/mnt), cheaper than a listing of /proc (about a millisecond
		// at 500 processes).
		add := d.views.add
		var pids []int
		if ok && last != 0 && pid > last && pid-last <= maxNewPIDs {
			add, pids = d.views.addNew, d.views.bornElsewhere(last, pid)
		} else {
			pids = listPIDs(d.proc)
		}
		last = pid
		var fresh []int
		d.updateRoots(func() ([]string, bool) {
			roots, changed, f := add(pids, watchRoots(d.config()))
			fresh = f
			return roots, changed
		})
		// What new processes in other namespaces hold is not in the
		// holder index yet: one look at them puts it there.
		d.sweepPIDs(ctx, "namespace", fresh, nil)
	}
}

// updateRoots gives the watcher its trees, the rules' roots and their
// views in other mount namespaces, as decide finds them.
func (d *Daemon) updateRoots(decide func() ([]string, bool)) {
	d.trees.update(d.config().Scan.Events, decide)
}

// eventChunk is how many processes one step of an event-driven sweep
// reads before its candidates are pinned; youngFirst how many of the
// newest processes are read before the other young ones.
const (
	eventChunk = 24
	youngFirst = 4
)

// onEvents handles a removal event and every other one already queued.
// The scanner returns its candidates only at the end of a sweep, so
// instead of one full sweep the processes are swept in small chunks, the
// likeliest holders first, pinning after each chunk:
//
//  1. the processes created since the last look (from /proc/loadavg) and
//     those seen holding deleted files in the same directories;
//  2. those that appeared in the listing of /proc since the previous one;
//  3. every other process, newest first (a short-lived holder is a young
//     process).
//
// An event arriving during a round gets step 1 at once, between two
// chunks, and another round after this one, since processes already swept
// may hold the file it names. Each round covers every process listed at
// its start, so it counts as a full sweep. Steps 2 and 3 run at most once
// per fullGap; within it a round is step 1 alone and the full pass is
// deferred to the end of the gap.
//
// An overflow among the events ends the rounds: the main loop then
// rescans and sweeps everything (recoverOverflow).
func (d *Daemon) onEvents(ctx context.Context, first watch.Event, events <-chan watch.Event) {
	pending := make(map[string]bool)
	// Removals are counted as they are taken, before the sweeps they
	// start: a file they lead to may be rescued before the rounds end.
	d.m.Events.Add(float64(d.sched.note(first, pending) + d.sched.drainEvents(events, pending)))
	queued := time.Since(first.At)
	// Rounds continue while events arrive during them, a few times at
	// most so that the main loop is not starved; what is left is covered
	// by the deferred full pass.
	for round := 0; len(pending) > 0 && !d.sched.overflowed() && ctx.Err() == nil; round++ {
		if round == 3 {
			d.sched.deferFull()
			break
		}
		dirs := pending
		pending = make(map[string]bool)
		d.eventRound(ctx, dirs, events, pending, queued)
		queued = 0
	}
}

// eventRound is one round of onEvents; events arriving meanwhile go to
// pending (their removals counted at once).
func (d *Daemon) eventRound(ctx context.Context, dirs map[string]bool, events <-chan watch.Event, pending map[string]bool, queued time.Duration) {
	start := time.Now()
	swept := make(map[int]bool)
	// First the descriptors the holder index saw in these directories,
	// a few readlinks however many files their processes hold: an old
	// holder that deletes its file and exits at once is pinned here.
	// Then the processes created since the last look, which the index
	// cannot know, and last the index's holders whole, for files they
	// opened there since it looked.
	d.sweepFDs(ctx, d.sched.targets(dirs))
	// The newest few young processes are swept first and pinned before
	// the others: a holder that deletes its file right after starting is
	// usually the newest.
	young := d.sched.newPIDs()
	first := young[:min(len(young), youngFirst)]
	likelyOK := d.sweepPIDs(ctx, "event", first, swept)
	likelyOK = d.sweepPIDs(ctx, "event", young[len(first):], swept) && likelyOK
	held := d.sched.likelyPIDs(dirs, nil, swept)
	likelyOK = d.sweepPIDs(ctx, "event", held, swept) && likelyOK
	likely := len(young) + len(held)
	targeted := time.Since(start)
	// The holder index knows who held files in these directories at the
	// last look. Only a file created since then may have a holder it does
	// not know (a process that had nothing open there): then, and only
	// then, every other process is swept here, newest first. Otherwise the
	// full pass that follows events runs on its own goroutine.
	last := d.sched.lastFullAt()
	unknown := d.sched.unknownHolders(dirs, last)
	gapOK := time.Since(last) >= fullGap(d.interval())
	if !unknown || !gapOK {
		// Events still queued are left to the main loop, which keeps
		// serving ticks, reloads and the watchdog between them.
		if gapOK {
			d.sched.requestFull()
		} else {
			d.sched.deferFull()
		}
		d.log.Debug("removal events handled", zap.Int("dirs", len(dirs)), zap.Int("likely_pids", likely),
			zap.Duration("queued", queued), zap.Duration("targeted", targeted), zap.Bool("full_deferred", !gapOK),
			zap.Bool("unknown_holders", unknown))
		return
	}
	listed := listPIDs(d.proc)
	listedAt := time.Now()
	// Forgetting what this round did not see is right only if it saw
	// every process.
	complete := likelyOK && listed != nil
	complete = d.sweepPIDs(ctx, "event", d.sched.likelyPIDs(nil, listed, swept), swept) && complete

	rest := make([]int, 0, len(listed))
	for _, pid := range listed {
		if !swept[pid] && pid != d.self {
			rest = append(rest, pid)
		}
	}
	slices.Sort(rest)
	slices.Reverse(rest)
	arrived := 0
	for len(rest) > 0 && !d.sched.overflowed() && ctx.Err() == nil {
		more := make(map[string]bool)
		if got := d.sched.drainEvents(events, more); got > 0 {
			arrived += got
			d.m.Events.Add(float64(got))
			quick := append(d.sched.newPIDs(), d.sched.likelyPIDs(more, nil, nil)...)
			complete = d.sweepPIDs(ctx, "event", quick, nil) && complete
			for _, pid := range quick {
				swept[pid] = true
			}
			for dir := range more {
				pending[dir] = true
			}
		}
		k := min(eventChunk, len(rest))
		if name, _ := d.sweeper.Backend(); name == scanner.BackendBPF {
			// One walk of every table in the kernel, filtered to rest,
			// costs less than the per-process walks of the chunks.
			k = len(rest)
		}
		complete = d.sweepPIDs(ctx, "event", rest[:k], swept) && complete
		rest = rest[k:]
	}
	complete = complete && len(rest) == 0
	if complete && ctx.Err() == nil {
		d.forget(start, listed)
	}
	d.sched.roundDone(start)
	d.log.Debug("removal events handled", zap.Int("dirs", len(dirs)), zap.Int("likely_pids", likely),
		zap.Int("procs", len(listed)), zap.Duration("queued", queued), zap.Duration("listed", listedAt.Sub(start)),
		zap.Duration("targeted", targeted), zap.Duration("total", time.Since(start)), zap.Int("arrived", arrived))
}

// recoverOverflow makes up for lost events. Past fs.inotify.max_queued_events
// the kernel drops events and queues one IN_Q_OVERFLOW (inotify(7)): any
// removal may have gone unseen, and a directory created meanwhile is not
// watched, its IN_CREATE lost with the rest. So every root is walked again
// and every process swept at once, without waiting for fullGap: the
// overflow is the sign of a burst, the very time holders come and go.
func (d *Daemon) recoverOverflow(ctx context.Context) {
	n := d.sched.takeOverflows()
	d.m.Overflows.Add(float64(n))
	d.log.Warn("inotify queue overflowed; rescanning watched trees", zap.Int("overflows", n))
	if w := d.trees.watcher(); w != nil {
		start := time.Now()
		added := w.Rescan()
		d.log.Debug("watched trees rescanned", zap.Int("added", added), zap.Int("watches", w.Watches()),
			zap.Duration("duration", time.Since(start)))
	}
	d.sched.requestFull()
}

// sweepPIDs sweeps pids and feeds the candidates. With swept non-nil,
// pids already in it are skipped and the others are added. It reports
// whether the sweep ran.
func (d *Daemon) sweepPIDs(ctx context.Context, kind string, pids []int, swept map[int]bool) bool {
	todo := pids[:0:0]
	seen := make(map[int]bool, len(pids))
	for _, pid := range pids {
		if swept[pid] || seen[pid] {
			continue
		}
		seen[pid] = true
		if swept != nil {
			swept[pid] = true
		}
		todo = append(todo, pid)
	}
	if len(todo) == 0 {
		return true
	}
	start := time.Now()
	res, err := d.sweeper.SweepPIDs(ctx, todo)
	if !d.swept(ctx, kind, start, err) {
		return false
	}
	d.sched.swept(todo, &res)
	d.feed(res.Candidates, start)
	return true
}

// swept counts a sweep of kind that started at start and logs its error;
// it reports whether the sweep gave a result.
func (d *Daemon) swept(ctx context.Context, kind string, start time.Time, err error) bool {
	d.m.Sweeps.WithLabelValues(kind).Inc()
	d.m.SweepDuration.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	if err != nil && ctx.Err() == nil {
		d.log.Error("sweep failed", zap.String("kind", kind), zap.Error(err))
	}
	return err == nil
}

// sweepFDs reads the given descriptors and feeds the candidates; what it
// saw is not given to the holder index, which needs whole tables.
func (d *Daemon) sweepFDs(ctx context.Context, targets []scanner.Target) {
	if len(targets) == 0 {
		return
	}
	start := time.Now()
	res, err := d.sweeper.SweepFDs(ctx, targets)
	if !d.swept(ctx, "event", start, err) {
		return
	}
	d.feed(res.Candidates, start)
}

// feed considers a sweep's candidates.
func (d *Daemon) feed(cs []scanner.Candidate, start time.Time) {
	d.m.Candidates.Add(float64(len(cs)))
	d.considerMu.Lock()
	for i := range cs {
		d.consider(&cs[i], start)
	}
	d.considerMu.Unlock()
}

// sweep runs one full sweep and feeds its candidates. Roots missing from
// the watches are restored first, so that a removal after that is an
// event and one before it is found by the sweep.
func (d *Daemon) sweep(ctx context.Context) {
	if w := d.trees.watcher(); w != nil {
		w.RestoreRoots()
	}
	// The sweep covers the processes that exist now, but those among
	// them that are new may delete a file a moment later: they become
	// young.
	d.sched.newPIDs()
	listed := listPIDs(d.proc)
	start := time.Now()
	res, err := d.sweeper.Sweep(ctx)
	if !d.swept(ctx, "full", start, err) {
		return
	}
	d.m.Candidates.Add(float64(len(res.Candidates)))
	pairs, capped := d.sched.sweptAll(res.Held)
	d.considerMu.Lock()
	if d.priors.load() {
		d.loadPrior(ctx, res.Candidates)
	}
	for i := range res.Candidates {
		d.consider(&res.Candidates[i], start)
	}
	d.priors.keep(res.Candidates)
	d.considerMu.Unlock()
	d.forget(start, listed)
	d.sched.fullDone(start)
	d.updateRoots(func() ([]string, bool) { return d.views.full(listed, watchRoots(d.config())) })
	if capped {
		d.log.Warn("holder index full; the rest is left to the sweeps", zap.Int("pairs", pairs))
	}
	d.exportDeletedOpen(res.Candidates)
	d.log.Debug("sweep", zap.String("kind", "full"), zap.Int("procs", res.Procs), zap.Int("fds", res.FDs),
		zap.Int("candidates", len(res.Candidates)), zap.Int("vanished", res.Vanished), zap.Int("denied", res.Denied),
		zap.Duration("duration", res.Duration))
}
