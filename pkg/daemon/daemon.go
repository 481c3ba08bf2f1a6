// Package daemon is relinkd's main loop: a periodic /proc sweep as the
// safety net, inotify removal events as the fast path, deduplication by
// inode, pin first, then a bounded pool of rescue workers, follow, reload
// and shutdown.
//
// The flow for one deleted file:
//
//	sweep/event ─> candidate ─> seen before? ─> rule match (cheap) ─> pin ─> rule match (pinned) ─> queue
//	                                  │                                                              │
//	                                  └─ yes: nothing, no repeated event                             v
//	             worker: policy.Decide (location, space, quota) ─> engine.Rescue ─> follow
//
// The pin comes before the expensive decision on purpose: once the daemon
// holds its own descriptor on the inode, the data outlives the holder, so a
// process that exits milliseconds after the unlink still loses nothing.
//
// Everything after the pin acts on the pinned file, not on the sweep's
// snapshot: the sweep reads a descriptor's name and its inode in separate
// calls, and a holder may point the number at another file in between
// (dup2(2)). The pin takes name, inode, owner and mount from the daemon's
// own descriptor and refuses one that is not the candidate (relink.Pin);
// the rules are matched again on that, and the policy decides and charges
// quotas on it. The first match, on the snapshot, only saves pinning files
// no rule wants.
//
// A failed rescue is the one exception to "seen before: nothing": its
// cause may pass, so later sweeps try again, with a backoff.
//
// What was rescued before a restart is known from the sidecars beside the
// rescued files, read before the first full sweep handles anything (see
// restart.go): such a file is not copied again, and a follow left
// unfinished is resumed into the same file.
package daemon

import (
	"context"
	"errors"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/fsguard"
	"github.com/relinkd/relinkd/internal/logging"
	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/pkg/metrics"
	"github.com/relinkd/relinkd/pkg/policy"
	"github.com/relinkd/relinkd/pkg/relink"
	"github.com/relinkd/relinkd/pkg/scanner"
	"github.com/relinkd/relinkd/pkg/watch"
)

// Defaults for Options left zero.
const (
	DefaultMaxPins        = 4096
	DefaultMaxPinnedBytes = 256 << 30
	// DefaultMaxFollows bounds the files followed at once: each follow
	// holds a pin, a copy and a goroutine polling /proc for as long as
	// its writer lives. Beyond it a rescue is a one-shot copy.
	DefaultMaxFollows    = 256
	DefaultStopTimeout   = 4 * time.Second
	DefaultPruneInterval = 10 * time.Minute
	// DefaultMaxWorkers caps the default worker count: a worker blocked
	// in copy_file_range holds an OS thread, and the unit's TasksMax
	// bounds the threads; more workers than disks gain nothing.
	DefaultMaxWorkers = 8
	// MaxRetryBackoff is the longest wait between two attempts at a
	// failed rescue (see retryBackoff).
	MaxRetryBackoff = time.Hour
	// DefaultStallTimeout: an 8 MiB chunk in 30 s is under 300 KiB/s, slow
	// even for a busy network filesystem.
	DefaultStallTimeout = 30 * time.Second
	// maxStalledWorkers bounds the workers replaced because they were
	// stuck, each an OS thread in the kernel that cannot be killed. Past
	// it, stuck workers are not replaced: the pool shrinks, and says so.
	maxStalledWorkers = 16
)

// Sweeper finds deleted-but-open files; *scanner.Scanner is one.
type Sweeper interface {
	Sweep(ctx context.Context) (scanner.Result, error)
	SweepPIDs(ctx context.Context, pids []int) (scanner.Result, error)
}

// Options configure a Daemon. Only Config is required.
type Options struct {
	Config     *policy.Config
	ConfigPath string // for the start-up event
	Version    string // for the start-up event

	ProcRoot       string // "" means /proc
	Workers        int    // rescue workers; 0 means NumCPU, within 2 to DefaultMaxWorkers
	MaxPins        int    // inodes pinned at once; 0 means DefaultMaxPins
	MaxPinnedBytes int64  // their total size; 0 means DefaultMaxPinnedBytes
	MaxFollows     int    // files followed at once; 0 means DefaultMaxFollows
	// FSTimeout is how long a call that asks a holder's filesystem (stat,
	// open of the pin) may take before the filesystem is taken for
	// unresponsive; 0 means fsguard.DefaultTimeout.
	FSTimeout time.Duration
	// StallTimeout is how long a rescue may go without progress (a chunk
	// copied) before its worker is taken for stuck in the file's
	// filesystem: the mount is marked unresponsive and a new worker takes
	// its place. 0 means DefaultStallTimeout.
	StallTimeout  time.Duration
	MaxWatches    int           // inotify watches; 0 means scan.max_watches
	StopTimeout   time.Duration // how long shutdown waits for workers; 0 means DefaultStopTimeout
	PruneInterval time.Duration // how often rescue.retention is applied; 0 means DefaultPruneInterval

	// Notify receives systemd notification states ("READY=1",
	// "STOPPING=1", "WATCHDOG=1", "RELOADING=1"); nil ignores them.
	Notify func(state string)
	// WatchdogInterval, when set, is how often "WATCHDOG=1" is sent from
	// the main loop (half of systemd's WatchdogSec is customary).
	WatchdogInterval time.Duration

	// Sweeper replaces the /proc scanner (tests); nil builds one.
	Sweeper Sweeper
}

// Daemon is one running relinkd.
type Daemon struct {
	opt     Options
	proc    procfs.FS // opt.ProcRoot
	log     *zap.Logger
	sweeper Sweeper
	m       *metrics.Metrics
	self    int

	pol    atomic.Pointer[policy.Policy]
	engine *relink.Engine // pins; rescues use an engine per method list

	reload chan reloadReq

	retention *retention // rescue.retention, never beside a rescue that publishes

	ledger *ledger // what is known of each deleted inode seen

	budget  *budget  // pins, pinned bytes and follows held at once
	workers *workers // the rescue workers and their queue

	writers *relink.Writers // shared by every follow's search for writers
	guard   *fsguard.Guard  // bounds calls on holders' filesystems

	priors *priors // rescues made before this start (see loadPrior)

	sched      *scheduler // which processes to sweep first, and when to sweep all
	considerMu sync.Mutex // candidates are considered one at a time
	views      *views     // watched trees in other mount namespaces
	trees      *trees     // the watcher and its trees
}

type reloadReq struct {
	cfg  *policy.Config
	done chan struct{}
}

// New builds a daemon for opt.Config. Nothing runs until Run.
func New(opt Options, log *zap.Logger) (*Daemon, error) {
	if opt.Config == nil {
		return nil, errors.New("daemon: no configuration")
	}
	if log == nil {
		log = zap.NewNop()
	}
	if opt.ProcRoot == "" {
		opt.ProcRoot = "/proc"
	}
	if opt.Workers <= 0 {
		opt.Workers = max(2, min(runtime.NumCPU(), DefaultMaxWorkers))
	}
	if opt.MaxPins <= 0 {
		opt.MaxPins = DefaultMaxPins
	}
	if opt.MaxPinnedBytes <= 0 {
		opt.MaxPinnedBytes = DefaultMaxPinnedBytes
	}
	if opt.MaxFollows <= 0 {
		opt.MaxFollows = DefaultMaxFollows
	}
	if opt.StallTimeout <= 0 {
		opt.StallTimeout = DefaultStallTimeout
	}
	if opt.StopTimeout <= 0 {
		opt.StopTimeout = DefaultStopTimeout
	}
	if opt.PruneInterval <= 0 {
		opt.PruneInterval = DefaultPruneInterval
	}
	if opt.Notify == nil {
		opt.Notify = func(string) {}
	}
	d := &Daemon{
		opt:     opt,
		proc:    procfs.New(opt.ProcRoot),
		log:     log,
		sweeper: opt.Sweeper,
		m:       metrics.New(),
		self:    os.Getpid(),
		engine:  relink.New(relink.Options{ProcRoot: opt.ProcRoot}, log),
		reload:  make(chan reloadReq),
		ledger:  newLedger(log),
		priors:  &priors{},
		views:   newViews(opt.ProcRoot),
		writers: relink.NewWriters(opt.ProcRoot),
	}
	d.trees = &trees{log: log, views: d.views}
	d.retention = &retention{log: log, interval: opt.PruneInterval, policy: d.pol.Load}
	d.sched = newScheduler(d.proc, d.self, d.views)
	d.budget = newBudget(opt.MaxPins, opt.MaxPinnedBytes, opt.MaxFollows, d.m)
	d.pol.Store(policy.New(opt.Config, log, policy.WithProcRoot(opt.ProcRoot)))
	d.guard = fsguard.New(fsguard.Options{
		Timeout:  opt.FSTimeout,
		Describe: d.describeMount,
		Changed: func(_ int, down bool) {
			if down {
				d.m.Unresponsive.Inc()
			} else {
				d.m.Unresponsive.Dec()
			}
		},
	}, log)
	d.workers = &workers{log: log, guard: d.guard, stall: opt.StallTimeout, do: d.handle, abandon: d.abandon,
		jobs: make(chan *job, opt.MaxPins)}
	if d.sweeper == nil {
		d.sweeper = scanner.New(scanner.Options{ProcRoot: opt.ProcRoot, Guard: d.guard}, log)
	}
	d.track(opt.Config)
	return d, nil
}

// track makes the sweeps feed the holder index with the watched trees of
// cfg (a Sweeper that cannot is left alone).
func (d *Daemon) track(cfg *policy.Config) {
	if t, ok := d.sweeper.(interface{ Track(func([]byte) bool) }); ok {
		t.Track(underRoots(watchRoots(cfg)))
	}
}

// setRoots gives the watcher its trees: the rules' roots and their views
// in other mount namespaces.
func (d *Daemon) setRoots(roots []string) { d.trees.set(roots, d.config().Scan.Events) }

// fullPasses runs the passes over every process that the loop asks for,
// off the loop: an event's targeted sweep never waits behind one.
func (d *Daemon) fullPasses(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.sched.fullReq:
			d.sweep(ctx)
		}
	}
}

// describeMount names a mount id for the filesystem unresponsive event,
// from the host's mount table.
func (d *Daemon) describeMount(id int) (string, string) {
	ms, err := d.pol.Load().HostMounts()
	if err != nil {
		return "", ""
	}
	for _, m := range ms {
		if m.ID == id {
			return m.MountPoint, m.FSType
		}
	}
	return "", ""
}

// birthTime is birthTime of c's file, under the guard: false when the
// descriptor is gone or its filesystem does not answer.
func (d *Daemon) birthTime(c *scanner.Candidate) (int64, bool) {
	var bt int64
	var alive bool
	if err := d.guard.Do(c.MntID, func() { bt, alive = birthTime(d.opt.ProcRoot, c) }, nil); err != nil {
		return 0, false
	}
	return bt, alive
}

// pin pins c under the guard, with the birth time read through the pin.
// A pin that comes back after the guard gave up on it is closed.
func (d *Daemon) pin(c *scanner.Candidate) (*relink.Pin, int64, error) {
	var p *relink.Pin
	var bt int64
	var err error
	cc := *c
	gerr := d.guard.Do(c.MntID, func() {
		if p, err = d.engine.Pin(cc); err == nil {
			bt, _ = birthTimeFD(p.FD())
		}
	}, func() {
		if p != nil {
			p.Close()
		}
	})
	if gerr != nil {
		return nil, 0, gerr
	}
	return p, bt, err
}

// Reload replaces the configuration: rules, rescue settings and watched
// directories take effect for the next candidate. Files already pinned or
// rescued (or reported) are not revisited; skipped, failed and unmatched
// ones are looked at again under the new rules. It returns once the main loop applied it.
func (d *Daemon) Reload(ctx context.Context, cfg *policy.Config) error {
	r := reloadReq{cfg: cfg, done: make(chan struct{})}
	select {
	case d.reload <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *Daemon) config() *policy.Config { return d.pol.Load().Config() }

func (d *Daemon) interval() time.Duration {
	if iv := time.Duration(d.config().Scan.Interval); iv > 0 {
		return iv
	}
	return 30 * time.Second
}

// hostRoot names where the daemon reaches the host's paths, for the
// start-up event: "/" (its own mount namespace is the host's) or via.
func hostRoot(via string) string {
	if via == "" {
		return "/"
	}
	return via
}

// Run runs the daemon until ctx ends, then stops within StopTimeout:
// in-flight copies are cancelled (the engine publishes atomically, so no
// partial file is left) and every pin is released.
func (d *Daemon) Run(ctx context.Context) error {
	cfg := d.config()
	d.log.Info("relinkd started", zap.String("version", d.opt.Version), zap.String("config", d.opt.ConfigPath),
		zap.Duration("interval", time.Duration(cfg.Scan.Interval)), zap.Bool("events", cfg.Scan.Events),
		zap.Int("workers", d.opt.Workers), zap.Int("pid", d.self),
		zap.String("path_resolution", d.engine.Resolution()), zap.String("host_root", hostRoot(d.pol.Load().Via())))

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
	d.log.Info("relinkd stopped")
	return err
}

// loop is the detection side: sweeps, events, reloads, watchdog.
func (d *Daemon) loop(ctx context.Context, events <-chan watch.Event) error {
	d.sweep(ctx)
	d.opt.Notify("READY=1")
	go d.fullPasses(ctx)

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
	// New mount namespaces (containers starting) get their views watched
	// within a second, between full passes: only new processes are looked
	// at.
	nsTick := time.NewTicker(time.Second)
	defer nsTick.Stop()
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
		case <-d.budget.room:
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
		case <-nsTick.C:
			roots, changed, fresh := d.views.add(listPIDs(d.proc), watchRoots(d.config()))
			if changed {
				d.setRoots(roots)
			}
			// What new processes in other namespaces hold is not in
			// the holder index yet: one look at them puts it there.
			d.sweepPIDs(ctx, "namespace", fresh, nil)
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

// eventChunk is how many processes one step of an event-driven sweep
// reads before its candidates are pinned.
const eventChunk = 24

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
	n := d.sched.note(first, pending) + d.sched.drainEvents(events, pending)
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
		n += d.eventRound(ctx, dirs, events, pending, queued)
		queued = 0
	}
	d.m.Events.Add(float64(n))
}

// eventRound is one round of onEvents; events arriving meanwhile go to
// pending. It returns how many arrived.
func (d *Daemon) eventRound(ctx context.Context, dirs map[string]bool, events <-chan watch.Event, pending map[string]bool, queued time.Duration) int {
	start := time.Now()
	swept := make(map[int]bool)
	likely := append(d.sched.newPIDs(), d.sched.likelyPIDs(dirs, nil, swept)...)
	likelyOK := d.sweepPIDs(ctx, "event", likely, swept)
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
		d.log.Debug("removal events handled", zap.Int("dirs", len(dirs)), zap.Int("likely_pids", len(likely)),
			zap.Duration("queued", queued), zap.Duration("targeted", targeted), zap.Bool("full_deferred", !gapOK),
			zap.Bool("unknown_holders", unknown))
		return 0
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
		complete = d.sweepPIDs(ctx, "event", rest[:k], swept) && complete
		rest = rest[k:]
	}
	complete = complete && len(rest) == 0
	if complete && ctx.Err() == nil {
		d.forget(start, listed)
	}
	d.sched.roundDone(start)
	d.log.Debug("removal events handled", zap.Int("dirs", len(dirs)), zap.Int("likely_pids", len(likely)),
		zap.Int("procs", len(listed)), zap.Duration("queued", queued), zap.Duration("listed", listedAt.Sub(start)),
		zap.Duration("targeted", targeted), zap.Duration("total", time.Since(start)), zap.Int("arrived", arrived))
	return arrived
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
	d.m.Sweeps.WithLabelValues(kind).Inc()
	d.m.SweepDuration.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	if err != nil {
		if ctx.Err() == nil {
			d.log.Error("sweep failed", zap.String("kind", kind), zap.Error(err))
		}
		return false
	}
	d.m.Candidates.Add(float64(len(res.Candidates)))
	d.sched.holders.update(todo, res.Held)
	d.considerMu.Lock()
	for i := range res.Candidates {
		d.consider(&res.Candidates[i], start)
	}
	d.considerMu.Unlock()
	return true
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
	d.m.Sweeps.WithLabelValues("full").Inc()
	d.m.SweepDuration.WithLabelValues("full").Observe(time.Since(start).Seconds())
	if err != nil {
		if ctx.Err() == nil {
			d.log.Error("sweep failed", zap.String("kind", "full"), zap.Error(err))
		}
		return
	}
	d.m.Candidates.Add(float64(len(res.Candidates)))
	d.sched.holders.replace(res.Held)
	d.considerMu.Lock()
	if !d.priors.loaded {
		d.loadPrior(ctx, res.Candidates)
	}
	for i := range res.Candidates {
		d.consider(&res.Candidates[i], start)
	}
	d.priors.keep(res.Candidates)
	d.considerMu.Unlock()
	d.forget(start, listed)
	d.sched.fullDone(start)
	if roots, changed := d.views.full(listed, watchRoots(d.config())); changed {
		d.setRoots(roots)
	}
	if pairs, capped := d.sched.holders.size(); capped {
		d.log.Warn("holder index full; the rest is left to the sweeps", zap.Int("pairs", pairs))
	}
	d.exportDeletedOpen(res.Candidates)
	d.log.Debug("sweep", zap.String("kind", "full"), zap.Int("procs", res.Procs), zap.Int("fds", res.FDs),
		zap.Int("candidates", len(res.Candidates)), zap.Int("vanished", res.Vanished), zap.Int("denied", res.Denied),
		zap.Duration("duration", res.Duration))
}

// consider is the fast path for one candidate: dedupe by inode, match the
// rules, pin at once, match the rules again on the pinned file, queue. now
// is the start of the sweep that found it.
func (d *Daemon) consider(c *scanner.Candidate, now time.Time) {
	if c.PID == d.self {
		return // our own pins
	}
	if !d.fresh(c, now) {
		return
	}
	// First sight (or a retry): the birth time is read after the pin
	// (through the daemon's own descriptor) for rescues, so that nothing
	// stands between detection and pin; for the rest it is read now.
	bt := func() int64 {
		t, _ := d.birthTime(c)
		return t
	}

	pol := d.pol.Load()
	rule, ok := pol.Match(c)
	if !ok {
		d.log.Debug("no watch rule matches", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD))
		d.ledger.record(c, stIgnored, bt())
		return
	}
	if rule.Action == policy.ActionReport {
		d.ledger.record(c, stReported, bt())
		d.reportOpen(c, rule.Name)
		return
	}

	size := max(c.Size, 0)
	if f, ok := d.budget.check(c.PID, size); !ok {
		// Not recorded: its holder is swept again as soon as a pin is
		// released (see budget.room), and by every later sweep.
		d.m.Skips.WithLabelValues("budget").Inc()
		if f.warn {
			d.log.Warn("rescue budget reached", zap.String("budget", f.budget), zap.Int("pins", f.pins),
				zap.Int("max_pins", d.opt.MaxPins), zap.Int64("pinned_bytes", f.pinned), zap.Int64("max_pinned_bytes", d.opt.MaxPinnedBytes),
				zap.String("detail", "files beyond it are taken up as soon as a pin is released"))
		}
		d.log.Debug("rescue deferred", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD),
			zap.String("reason", "budget"), zap.String("budget", f.budget))
		return
	}

	pin, pbt, err := d.pin(c)
	if err != nil {
		switch {
		case errors.Is(err, fsguard.ErrUnresponsive), errors.Is(err, fsguard.ErrTooManyStuck):
			// Not recorded: taken up again once the filesystem answers.
			d.log.Debug("pin: filesystem not answering", logging.Path("path", c.Path), zap.Int("pid", c.PID),
				zap.Int("fd", c.FD), zap.Int("mnt_id", c.MntID), zap.Error(err))
		case errors.Is(err, relink.ErrVanished), errors.Is(err, relink.ErrIdentity):
			// Another descriptor of the same inode may still work; a
			// later sweep decides. Nothing to report: a holder that
			// reuses a number for another file between the sweep and
			// the pin is common, and one that flips it on purpose
			// gains nothing but this line.
			d.log.Debug("pin: candidate gone", zap.Int("pid", c.PID), zap.Int("fd", c.FD), zap.Error(err))
		case errors.Is(err, relink.ErrNotRegular):
			d.ledger.record(c, stIgnored, bt())
		default:
			d.ledger.recordFailure(c, now, d.interval(), bt())
			d.m.Failures.Inc()
			d.log.Error("rescue failed", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD),
				zap.Error(err), c.ContainerField())
		}
		return
	}
	// From here on the candidate is the pinned file: the same name and
	// inode (Pin refuses anything else), with the owner, size and mount
	// read through the daemon's own descriptor. The rules decide on that.
	pc := pin.Candidate()
	if rule, ok = pol.Match(&pc); !ok || rule.Action == policy.ActionReport {
		if err := pin.Close(); err != nil {
			d.log.Warn("release pin", zap.Int("pid", pc.PID), zap.Int("fd", pc.FD), zap.Error(err))
		}
		if !ok {
			d.log.Debug("no watch rule matches the pinned file", logging.Path("path", pc.Path), zap.Int("pid", pc.PID),
				zap.Int("fd", pc.FD), zap.Int64("size", pc.Size), zap.Uint32("owner", pc.Owner))
			d.ledger.record(&pc, stIgnored, pbt)
			return
		}
		d.ledger.record(&pc, stReported, pbt)
		d.reportOpen(&pc, rule.Name)
		return
	}
	if d.takePrior(&pc, pin, pbt, now) {
		return
	}
	d.ledger.record(&pc, stQueued, pbt)
	d.budget.take(max(pc.Size, 0))
	// Never blocks: the queue has room for MaxPins jobs.
	d.workers.queue(&job{c: pc, pin: pin, found: now})
}

// fresh reports whether c needs handling: its inode was not seen before,
// its number now belongs to another file, or its rescue failed and the
// retry is due. Otherwise c only joins the inode's holders.
func (d *Daemon) fresh(c *scanner.Candidate, now time.Time) bool {
	d.sched.notePID(c)
	s := d.ledger.see(c, now)
	if s.check {
		// A holder not seen with this inode before: inode numbers are
		// reused once a file is freed, so tell a new file from the same
		// one by its birth time (statx(2) STATX_BTIME).
		bt, alive := d.birthTime(c)
		if !alive {
			return false
		}
		s = d.ledger.confirm(c, s.entry, bt, now)
	}
	if s.wait {
		return d.retrySpace(c, s.spaceWait)
	}
	if s.retry {
		d.logRetry(c, s.failures)
	}
	return s.handle
}

// retrySpace says whether a file that did not fit is tried again now.
func (d *Daemon) retrySpace(c *scanner.Candidate, w spaceWait) bool {
	if !d.spaceBack(w) {
		return false
	}
	d.log.Debug("room again at the destination, retrying", logging.Path("path", c.Path), zap.Int("pid", c.PID),
		zap.Int("fd", c.FD), zap.String("root", w.root))
	return true
}

func (d *Daemon) logRetry(c *scanner.Candidate, failures int) {
	d.log.Debug("retrying failed rescue", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD),
		zap.Int("failures", failures))
}

func (d *Daemon) reportOpen(c *scanner.Candidate, rule string) {
	d.m.Reports.Inc()
	d.log.Info("deleted file open", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD),
		zap.String("comm", c.Comm), zap.Uint32("uid", c.UID), zap.Int64("size", c.Size), zap.String("rule", rule), c.ContainerField())
}

// handle is what a worker does with a job: resume the follow an earlier
// daemon left, or rescue.
func (d *Daemon) handle(ctx context.Context, j *job, wg *sync.WaitGroup, progress func()) {
	if j.prior != nil {
		d.resume(ctx, j, wg, progress)
		return
	}
	d.rescue(ctx, j, wg, progress)
}

func (d *Daemon) rescue(ctx context.Context, j *job, wg *sync.WaitGroup, progress func()) {
	c := &j.c
	pol := d.pol.Load()
	dec := pol.Decide(c)
	switch dec.Action {
	case policy.Ignore:
		d.unpin(j, stIgnored)
		return
	case policy.Report:
		d.reportOpen(c, dec.Rule)
		d.unpin(j, stReported)
		return
	case policy.Skip:
		d.m.Skips.WithLabelValues(dec.Reason).Inc()
		d.log.Info("rescue skipped", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD),
			zap.String("reason", dec.Reason), zap.String("rule", dec.Rule), zap.String("detail", dec.Detail), c.ContainerField())
		if dec.Reason == policy.ReasonSpace && dec.Root != "" {
			d.unpinNoSpace(j, dec.Root, uint64(max(c.Size, 0)), dec.MinFreeBytes)
			return
		}
		d.unpin(j, stSkipped)
		return
	}
	methods := make([]relink.Method, 0, len(dec.Methods))
	for _, m := range dec.Methods {
		methods = append(methods, relink.Method(m))
	}
	eng := relink.New(relink.Options{ProcRoot: d.opt.ProcRoot, Methods: methods, Sidecar: true, Writers: d.writers, Progress: progress}, d.log)
	var res relink.Result
	var err error
	d.retention.publish(func() {
		res, err = eng.Rescue(ctx, j.pin, relink.Destination{
			Root: dec.Root, Via: dec.Via, Rel: dec.Rel, MinFreeBytes: dec.MinFreeBytes, Rule: dec.Rule,
			NoRoomToCopy: dec.NoRoomToCopy, Beneath: dec.Beneath,
		})
	})
	if err != nil {
		pol.Release(c, dec)
		if errors.Is(err, context.Canceled) {
			// Shutdown cancelled it by design (the engine logged
			// "rescue cancelled" and left nothing behind): no failure.
			d.abandon(j)
			return
		}
		if errors.Is(err, relink.ErrNoSpace) {
			// The engine logged "rescue skipped" (space): tried again
			// once the destination has the room, not on a backoff.
			d.m.Skips.WithLabelValues(policy.ReasonSpace).Inc()
			d.unpinNoSpace(j, dec.Root, uint64(max(c.Size, 0)), dec.MinFreeBytes)
			return
		}
		// The engine logged "rescue failed"; a later sweep retries.
		d.m.Failures.Inc()
		d.unpin(j, stFailed)
		return
	}
	d.m.Rescues.WithLabelValues(string(res.Method)).Inc()
	d.m.RescuedBytes.Add(float64(res.Bytes))
	if !dec.Follow || !c.Writable() {
		d.unpin(j, stRescued)
		return
	}
	d.follow(ctx, j, eng, res, wg)
}

// follow follows a rescued job's file until its last writer closes it,
// within the follow budget, and releases the pin then.
func (d *Daemon) follow(ctx context.Context, j *job, eng *relink.Engine, res relink.Result, wg *sync.WaitGroup) {
	c := &j.c
	if ok, warn := d.budget.startFollow(); !ok {
		// The copy stands as it is: a one-shot rescue, not a loss.
		if warn {
			d.log.Warn("follow budget reached", zap.Int("max_follows", d.opt.MaxFollows),
				zap.String("detail", "files rescued beyond it are kept as copied, without following their writers"))
		}
		d.log.Debug("follow skipped", logging.Path("path", c.Path), logging.Path("rescued_to", []byte(res.Path)),
			zap.Int("pid", c.PID), zap.Int("fd", c.FD), zap.String("reason", "budget"), zap.String("budget", "follows"))
		d.unpin(j, stRescued)
		return
	}
	// Follow runs as long as the writer: off the worker pool, still
	// holding the pin (which counts against MaxPins).
	wg.Add(1)
	go func() {
		defer wg.Done()
		fres, err := eng.Follow(ctx, j.pin)
		if err == nil && fres.Bytes > res.Bytes {
			d.m.RescuedBytes.Add(float64(fres.Bytes - res.Bytes))
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			d.m.Failures.Inc()
		}
		d.budget.endFollow()
		d.unpin(j, stRescued)
	}()
}

// unpin releases a job's pin and records the inode's final state.
func (d *Daemon) unpin(j *job, st state) {
	d.release(j)
	d.ledger.finish(j.c.Key(), st, j.found, d.interval())
}

// unpinNoSpace releases a job's pin for a file that did not fit in root:
// a copy needs need bytes there above minFree.
func (d *Daemon) unpinNoSpace(j *job, root string, need, minFree uint64) {
	d.release(j)
	d.ledger.noSpace(j.c.Key(), spaceWait{root: root, need: need, min: minFree})
}

// spaceBack reports whether the destination of a file that did not fit
// has the room now (statfs, no more): only then is it tried again.
func (d *Daemon) spaceBack(w spaceWait) bool {
	avail, _, err := d.pol.Load().FreeSpace(w.root)
	return err == nil && avail >= w.need+w.min
}

// abandon releases the pin of a job given up at shutdown and forgets its
// inode, so that nothing about it holds if it is looked at again.
func (d *Daemon) abandon(j *job) {
	d.release(j)
	d.ledger.abandon(j.c.Key())
}

// release closes a job's pin and takes it off the pin counts.
func (d *Daemon) release(j *job) {
	if err := j.pin.Close(); err != nil {
		d.log.Warn("release pin", zap.Int("pid", j.c.PID), zap.Int("fd", j.c.FD), zap.Error(err))
	}
	d.budget.give(max(j.c.Size, 0))
}

// forget drops what the full sweep that started at start no longer
// showed: inodes closed by every holder (their numbers may be reused),
// holders that closed theirs or exited (their pids may be reused), and
// stale pid hints. Inodes still queued keep their entry.
func (d *Daemon) forget(start time.Time, listed []int) {
	d.ledger.forget(start)
	d.sched.forget(start, listed)
}

// apply installs a new configuration (from the main loop).
func (d *Daemon) apply(cfg *policy.Config) {
	oldPol := d.pol.Load()
	old := oldPol.Config()
	pol := policy.New(cfg, d.log, policy.WithProcRoot(d.opt.ProcRoot))
	// Keep the per-user grants and the rescue roots' usage.
	pol.Inherit(oldPol)
	d.pol.Store(pol)
	d.ledger.reconsider()
	d.track(cfg)
	d.trees.reload(watchRoots(cfg), cfg.Scan.Events)
	fields := []zap.Field{zap.String("config", cfg.File), zap.Int("rules", len(cfg.Watch))}
	if old.Log != cfg.Log {
		fields = append(fields, zap.String("note", "log.level and log.format take effect at restart"))
	}
	if old.Metrics != cfg.Metrics {
		fields = append(fields, zap.String("note_metrics", "metrics.listen takes effect at restart"))
	}
	if old.Scan.Events != cfg.Scan.Events && d.trees.watcher() == nil && cfg.Scan.Events {
		fields = append(fields, zap.String("note_events", "scan.events turned on takes effect at restart"))
	}
	d.log.Info("config reloaded", fields...)
}

// watchRoots returns the directory trees the rescue rules cover. Report
// rules are left to sweeps: there is no race to win for a report.
func watchRoots(cfg *policy.Config) []string {
	var globs []string
	for _, r := range cfg.Watch {
		if r.Action == policy.ActionRescue {
			globs = append(globs, r.Paths...)
		}
	}
	return watch.Roots(globs)
}
