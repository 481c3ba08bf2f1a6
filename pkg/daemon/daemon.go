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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/events"
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

	ProcRoot string // "" means /proc
	// HostRoot is container mode's host root (relinkd run --host-root):
	// the host's "/" mounted in the daemon's view, through which its
	// watched trees and rescue roots are reached (policy.WithHostRoot).
	// "" means none.
	HostRoot       string
	Workers        int   // rescue workers; 0 means NumCPU, within 2 to DefaultMaxWorkers
	MaxPins        int   // inodes pinned at once; 0 means DefaultMaxPins
	MaxPinnedBytes int64 // their total size; 0 means DefaultMaxPinnedBytes
	MaxFollows     int   // files followed at once; 0 means DefaultMaxFollows
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
	ev      events.Emitter // the rescue events, on log
	sweeper Sweeper
	m       *metrics.Metrics
	self    int

	pol    atomic.Pointer[policy.Policy]
	engine *relink.Engine // pins; rescues use an engine per method list

	reload chan reloadReq
	jobs   chan *job

	// publishing is held shared by every rescue and exclusively by each
	// prune of a root: a directory a rescue is about to link its
	// O_TMPFILE into looks empty, and the pruner removes empty ones.
	publishing sync.RWMutex

	mu      sync.Mutex
	inodes  map[scanner.Key]*inode
	pins    int
	pinned  int64
	follows int            // follows running
	guard   *fsguard.Guard // bounds calls on holders' filesystems
	slots   []*slot        // one per worker started, stalled ones included
	stalled int            // workers replaced because they were stuck
	// Budget bursts: deferred holds the pids whose files found no pin
	// (swept again as soon as a pin is released, see room); each
	// budget is said once per burst.
	deferred      map[int]struct{}
	pinsWarned    bool
	followsWarned bool
	room          chan struct{}                // a pin was released while files were deferred
	dirPIDs       map[string]map[int]time.Time // dir of a deleted file -> pids seen holding it
	knownPID      map[int]struct{}             // pids listed at the last full sweep
	lastPID       int                          // the newest pid at the last look
	young         map[int]time.Time            // new processes, when first seen (see youngTTL)

	// Rescues made before this start (see loadPrior); priorMu guards
	// prior, priorLoaded is the main loop's.
	priorMu     sync.Mutex
	prior       map[scanner.Key][]*prior
	priorLoaded bool

	// Main loop only.
	fullDeferred bool                 // an event round left its full pass for later
	created      map[string]time.Time // watched directories where files were created, when last
	createdNew   bool                 // files were created since the loop last asked for a pass
	// Shared by the loop and the full-pass goroutine.
	lastFull   atomic.Int64  // unix ns of the start of the last pass over every process
	fullReq    chan struct{} // asks the full-pass goroutine for a pass
	considerMu sync.Mutex    // candidates are considered one at a time
	holders    *holderIndex
	views      *views     // watched trees in other mount namespaces
	rootsMu    sync.Mutex // one SetRoots at a time
	overflows  int        // inotify queue overflows not yet handled
	watcher    *watch.Watcher
}

type reloadReq struct {
	cfg  *policy.Config
	done chan struct{}
}

// state of one inode the daemon has seen.
type state int

const (
	stQueued   state = iota // pinned, waiting for or under rescue (or follow)
	stRescued               // rescued; never again while it stays open
	stReported              // report rule: logged once
	stSkipped               // policy said no: logged once
	stFailed                // rescue failed: retried with a backoff (see retryBackoff)
	stIgnored               // no rule matches
	stNoSpace               // did not fit: retried once the destination has the room (see spaceBack)
)

type inode struct {
	st       state
	seen     time.Time              // last sweep that showed it
	btime    int64                  // birth time (ns), 0 where the filesystem has none
	holders  map[holderID]time.Time // when each was last seen
	failures int                    // failed attempts so far
	retryAt  time.Time              // stFailed: sweeps from then on try again
	// stNoSpace: the rescue root and what the copy needs there.
	spaceRoot           string
	spaceNeed, spaceMin uint64
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

type job struct {
	c     scanner.Candidate // the pinned file (pin.Candidate())
	rule  policy.Rule       // the rule that matched it, once pinned
	pin   *relink.Pin
	found time.Time // start of the sweep that found it
	prior *prior    // a follow an earlier daemon left unfinished: resume it (see resume)
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
		opt:      opt,
		proc:     procfs.New(opt.ProcRoot),
		log:      log,
		ev:       events.New(log),
		sweeper:  opt.Sweeper,
		m:        metrics.New(),
		self:     os.Getpid(),
		engine:   relink.New(relink.Options{ProcRoot: opt.ProcRoot, Sidecar: true}, log),
		reload:   make(chan reloadReq),
		jobs:     make(chan *job, opt.MaxPins),
		inodes:   make(map[scanner.Key]*inode),
		dirPIDs:  make(map[string]map[int]time.Time),
		knownPID: make(map[int]struct{}),
		young:    make(map[int]time.Time),
		deferred: make(map[int]struct{}),
		created:  make(map[string]time.Time),
		fullReq:  make(chan struct{}, 1),
		holders:  newHolderIndex(maxHolderPairs),
		views:    newViews(opt.ProcRoot, opt.HostRoot),
		room:     make(chan struct{}, 1),
	}
	d.pol.Store(policy.New(opt.Config, log, policy.WithProcRoot(opt.ProcRoot), policy.WithHostRoot(opt.HostRoot)))
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
func (d *Daemon) setRoots(roots []string) {
	w := d.getWatcher()
	if w == nil || !d.config().Scan.Events {
		return
	}
	d.rootsMu.Lock()
	defer d.rootsMu.Unlock()
	w.SetRoots(roots)
	d.log.Debug("watched trees", zap.Int("roots", len(roots)), zap.Strings("mntns", d.views.namespaces()),
		zap.Int("watches", w.Watches()))
}

// lastFullAt is the start of the last pass over every process.
func (d *Daemon) lastFullAt() time.Time { return time.Unix(0, d.lastFull.Load()) }

// requestFull asks the full-pass goroutine for a pass; one asked for
// already and not started yet covers this one too.
func (d *Daemon) requestFull() {
	d.fullDeferred = false
	select {
	case d.fullReq <- struct{}{}:
	default:
	}
}

// fullPasses runs the passes over every process that the loop asks for,
// off the loop: an event's targeted sweep never waits behind one.
func (d *Daemon) fullPasses(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.fullReq:
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
		d.startWorker(wctx, &wg)
	}
	go d.watchStalls(wctx, &wg)

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
			d.setWatcher(w)
			watchDone = make(chan error, 1)
			go func() { watchDone <- w.Run(wctx, events) }()
		}
	}

	wg.Add(1)
	go func() {
		defer wg.Done()
		d.pruner(wctx)
	}()

	err := d.loop(ctx, events)

	d.log.Info("relinkd stopping")
	d.opt.Notify("STOPPING=1")
	if w := d.getWatcher(); w != nil {
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
	for {
		select {
		case j := <-d.jobs:
			d.abandon(j)
			continue
		default:
		}
		break
	}
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
			d.requestFull()
		case <-full.C:
			fullArmed = false
			if d.fullDeferred {
				d.requestFull()
			}
		case ev := <-events:
			d.onEvents(ctx, ev, events)
			if d.overflows > 0 {
				d.recoverOverflow(ctx)
			}
			if d.createdNew {
				// Whoever created files in the watched trees may be a
				// process the holder index does not know yet: a pass
				// over every process finds it, within the full-pass
				// gap, off the loop.
				d.createdNew = false
				if time.Since(d.lastFullAt()) >= d.fullGap(interval) {
					d.requestFull()
				} else {
					d.fullDeferred = true
				}
			}
			if d.fullDeferred && !fullArmed {
				full.Reset(max(time.Millisecond, d.fullGap(interval)-time.Since(d.lastFullAt())))
				fullArmed = true
			}
		case <-d.room:
			// Pins were released while files waited for one: their
			// holders may not live until the next sweep. A second
			// signal with nothing deferred ends the burst.
			if pids := d.takeDeferred(); len(pids) > 0 {
				d.sweepPIDs(ctx, "deferred", pids, nil)
				select {
				case d.room <- struct{}{}:
				default:
				}
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

// fullGap is the least time between two full passes over every process
// that events trigger: a tenth of scan.interval, within 1 to 5 seconds. A
// directory with constant churn would otherwise cost one full sweep per
// event; within the gap an event round sweeps only the likely holders
// (new processes and those seen in the same directories) and the full pass
// follows when the gap has passed.
func (d *Daemon) fullGap(interval time.Duration) time.Duration {
	return min(max(time.Second, interval/10), 5*time.Second)
}

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
	n := d.note(first, pending) + d.drainEvents(events, pending)
	queued := time.Since(first.At)
	// Rounds continue while events arrive during them, a few times at
	// most so that the main loop is not starved; what is left is covered
	// by the deferred full pass.
	for round := 0; len(pending) > 0 && d.overflows == 0 && ctx.Err() == nil; round++ {
		if round == 3 {
			d.fullDeferred = true
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
	likely := append(d.newPIDs(), d.likelyPIDs(dirs, nil, swept)...)
	likelyOK := d.sweepPIDs(ctx, "event", likely, swept)
	targeted := time.Since(start)
	// The holder index knows who held files in these directories at the
	// last look. Only a file created since then may have a holder it does
	// not know (a process that had nothing open there): then, and only
	// then, every other process is swept here, newest first. Otherwise the
	// full pass that follows events runs on its own goroutine.
	last := d.lastFullAt()
	unknown := false
	for dir := range dirs {
		if t, ok := d.created[dir]; ok && !t.Before(last) {
			unknown = true
		}
	}
	for dir, t := range d.created {
		if t.Before(last) {
			delete(d.created, dir)
		}
	}
	gapOK := time.Since(last) >= d.fullGap(d.interval())
	if !unknown || !gapOK {
		// Events still queued are left to the main loop, which keeps
		// serving ticks, reloads and the watchdog between them.
		if gapOK {
			d.requestFull()
		} else {
			d.fullDeferred = true
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
	complete = d.sweepPIDs(ctx, "event", d.likelyPIDs(nil, listed, swept), swept) && complete

	rest := make([]int, 0, len(listed))
	for _, pid := range listed {
		if !swept[pid] && pid != d.self {
			rest = append(rest, pid)
		}
	}
	slices.Sort(rest)
	slices.Reverse(rest)
	arrived := 0
	for len(rest) > 0 && d.overflows == 0 && ctx.Err() == nil {
		more := make(map[string]bool)
		if got := d.drainEvents(events, more); got > 0 {
			arrived += got
			quick := append(d.newPIDs(), d.likelyPIDs(more, nil, nil)...)
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
	d.lastFull.Store(start.UnixNano())
	d.fullDeferred = false
	d.log.Debug("removal events handled", zap.Int("dirs", len(dirs)), zap.Int("likely_pids", len(likely)),
		zap.Int("procs", len(listed)), zap.Duration("queued", queued), zap.Duration("listed", listedAt.Sub(start)),
		zap.Duration("targeted", targeted), zap.Duration("total", time.Since(start)), zap.Int("arrived", arrived))
	return arrived
}

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

// newPIDs returns, newest first, the young processes: those created since
// the previous call, found through /proc/loadavg, which ends with the pid
// most recently allocated (proc(5)); pids are handed out in increasing
// order until they wrap at pid_max. Then those found within youngTTL.
func (d *Daemon) newPIDs() []int {
	last, ok := d.proc.LastPID()
	if !ok {
		return nil
	}
	d.mu.Lock()
	prev := d.lastPID
	d.lastPID = last
	d.mu.Unlock()
	var fresh []int
	switch {
	case prev == 0 || last <= prev:
	case last-prev <= maxNewPIDs:
		fresh = newLeaders(d.proc, prev, last)
	default:
		// More pids handed out since the last look than are worth
		// probing one by one (a fork-heavy host): the listing of /proc,
		// which shows thread-group leaders only, has the new processes
		// above prev; the newest maxYoung of them are kept.
		for _, pid := range listPIDs(d.proc) {
			if pid > prev && pid <= last {
				fresh = append(fresh, pid)
			}
		}
		slices.Sort(fresh)
		fresh = fresh[max(0, len(fresh)-maxYoung):]
	}
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, pid := range fresh {
		d.young[pid] = now
	}
	out := make([]int, 0, len(d.young))
	for pid, at := range d.young {
		if now.Sub(at) > youngTTL {
			delete(d.young, pid)
			continue
		}
		out = append(out, pid)
	}
	slices.SortFunc(out, func(a, b int) int {
		if c := d.young[b].Compare(d.young[a]); c != 0 {
			return c
		}
		return b - a
	})
	for _, pid := range out[min(len(out), maxYoung):] {
		delete(d.young, pid)
	}
	return out[:min(len(out), maxYoung)]
}

// drainEvents notes every queued event (see note) and returns how many
// were removals.
func (d *Daemon) drainEvents(events <-chan watch.Event, dirs map[string]bool) int {
	n := 0
	for {
		select {
		case ev := <-events:
			n += d.note(ev, dirs)
		default:
			return n
		}
	}
}

// note adds a removal's directory to dirs and returns 1, or counts an
// overflow, which is no removal, and returns 0.
func (d *Daemon) note(ev watch.Event, dirs map[string]bool) int {
	if ev.Overflow {
		d.overflows++
		return 0
	}
	// A view in another mount namespace: the holders there name the
	// directory as they see it.
	ev.Dir = d.views.viewOf(ev.Dir)
	if ev.Created {
		d.created[ev.Dir] = ev.At
		d.createdNew = true
		return 0
	}
	dirs[ev.Dir] = true
	return 1
}

// recoverOverflow makes up for lost events. Past fs.inotify.max_queued_events
// the kernel drops events and queues one IN_Q_OVERFLOW (inotify(7)): any
// removal may have gone unseen, and a directory created meanwhile is not
// watched, its IN_CREATE lost with the rest. So every root is walked again
// and every process swept at once, without waiting for fullGap: the
// overflow is the sign of a burst, the very time holders come and go.
func (d *Daemon) recoverOverflow(ctx context.Context) {
	n := d.overflows
	d.overflows = 0
	d.m.Overflows.Add(float64(n))
	d.log.Warn("inotify queue overflowed; rescanning watched trees", zap.Int("overflows", n))
	if w := d.getWatcher(); w != nil {
		start := time.Now()
		added := w.Rescan()
		d.log.Debug("watched trees rescanned", zap.Int("added", added), zap.Int("watches", w.Watches()),
			zap.Duration("duration", time.Since(start)))
	}
	d.requestFull()
}

// likelyPIDs returns, newest first and not yet swept, the pids last seen
// under dirs plus those in listed that the previous listing did not have;
// listed becomes the new reference. A nil listed only adds dirs' pids.
func (d *Daemon) likelyPIDs(dirs map[string]bool, listed []int, swept map[int]bool) []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	set := make(map[int]struct{})
	for dir := range dirs {
		for pid := range d.dirPIDs[dir] {
			set[pid] = struct{}{}
		}
		for _, pid := range d.holders.pids(dir) {
			set[pid] = struct{}{}
		}
	}
	for _, pid := range listed {
		if _, ok := d.knownPID[pid]; !ok {
			set[pid] = struct{}{}
		}
	}
	if listed != nil {
		clear(d.knownPID)
		for _, pid := range listed {
			d.knownPID[pid] = struct{}{}
		}
	}
	pids := make([]int, 0, len(set))
	for pid := range set {
		if !swept[pid] && pid != d.self {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	slices.Reverse(pids)
	return pids
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
	d.holders.update(todo, res.Held)
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
	if w := d.getWatcher(); w != nil {
		w.RestoreRoots()
	}
	// The sweep covers the processes that exist now, but those among
	// them that are new may delete a file a moment later: they become
	// young.
	d.newPIDs()
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
	d.holders.replace(res.Held)
	d.considerMu.Lock()
	if !d.priorLoaded {
		d.loadPrior(ctx, res.Candidates)
	}
	for i := range res.Candidates {
		d.consider(&res.Candidates[i], start)
	}
	d.keepPrior(res.Candidates)
	d.considerMu.Unlock()
	d.forget(start, listed)
	d.lastFull.Store(start.UnixNano())
	if roots, changed := d.views.full(listed, watchRoots(d.config())); changed {
		d.setRoots(roots)
	}
	if pairs, capped := d.holders.size(); capped {
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
		d.record(c, stIgnored, now, bt())
		return
	}
	if rule.Action == policy.ActionReport {
		d.record(c, stReported, now, bt())
		d.reportOpen(c, rule.Name)
		return
	}

	size := max(c.Size, 0)
	d.mu.Lock()
	if pins, pinned := d.pins, d.pinned; pins >= d.opt.MaxPins || pinned+size > d.opt.MaxPinnedBytes {
		// Not recorded: its holder is swept again as soon as a pin is
		// released (see room), and by every later sweep.
		d.deferred[c.PID] = struct{}{}
		warn := !d.pinsWarned
		d.pinsWarned = true
		d.mu.Unlock()
		budget := "pins"
		if pins < d.opt.MaxPins {
			budget = "pinned_bytes"
		}
		d.m.Skips.WithLabelValues("budget").Inc()
		if warn {
			d.log.Warn("rescue budget reached", zap.String("budget", budget), zap.Int("pins", pins),
				zap.Int("max_pins", d.opt.MaxPins), zap.Int64("pinned_bytes", pinned), zap.Int64("max_pinned_bytes", d.opt.MaxPinnedBytes),
				zap.String("detail", "files beyond it are taken up as soon as a pin is released"))
		}
		d.log.Debug("rescue deferred", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD),
			zap.String("reason", "budget"), zap.String("budget", budget))
		return
	}
	d.mu.Unlock()

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
			d.record(c, stIgnored, now, bt())
		default:
			d.recordFailure(c, now, bt())
			d.m.Failures.Inc()
			d.ev.Failed(c, err)
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
			d.record(&pc, stIgnored, now, pbt)
			return
		}
		d.record(&pc, stReported, now, pbt)
		d.reportOpen(&pc, rule.Name)
		return
	}
	if d.takePrior(&pc, pin, pbt, now) {
		return
	}
	size = max(pc.Size, 0)
	d.record(&pc, stQueued, now, pbt)
	d.mu.Lock()
	d.pins++
	d.pinned += size
	d.m.PinsHeld.Set(float64(d.pins))
	d.m.PinnedBytes.Set(float64(d.pinned))
	d.mu.Unlock()
	// Never blocks: the queue has room for MaxPins jobs.
	d.jobs <- &job{c: pc, rule: rule, pin: pin, found: now}
}

// fresh reports whether c needs handling: its inode was not seen before,
// its number now belongs to another file, or its rescue failed and the
// retry is due. Otherwise c only joins the inode's holders.
func (d *Daemon) fresh(c *scanner.Candidate, now time.Time) bool {
	key := c.Key()
	hid := holderID{pid: c.PID, start: c.StartTime}
	d.mu.Lock()
	d.notePID(c, now)
	in, known := d.inodes[key]
	if !known {
		d.mu.Unlock()
		return true
	}
	in.seen = time.Now() // see recordLocked
	_, same := in.holders[hid]
	if same || in.st == stQueued {
		// A pinned inode cannot be freed, so its number cannot have
		// been reused: another descriptor of the same file.
		if !same {
			d.log.Debug("pinned inode, new holder", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD))
		}
		in.holders[hid] = time.Now()
		retry, failures := in.retryDue(now), in.failures
		space, root, need, minFree := in.st == stNoSpace, in.spaceRoot, in.spaceNeed, in.spaceMin
		d.mu.Unlock()
		if space {
			return d.retrySpace(c, root, need, minFree)
		}
		if retry {
			d.logRetry(c, failures)
		}
		return retry
	}
	d.mu.Unlock()

	// A holder not seen with this inode before: inode numbers are reused
	// once a file is freed, so tell a new file from the same one by its
	// birth time (statx(2) STATX_BTIME).
	bt, alive := d.birthTime(c)
	if !alive {
		return false
	}
	d.mu.Lock()
	if cur := d.inodes[key]; cur == in {
		d.log.Debug("known inode, new holder", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD),
			zap.Bool("same_file", in.btime == bt), zap.Int("state", int(in.st)))
		if in.btime == bt {
			in.holders[hid] = time.Now()
			retry, failures := in.retryDue(now), in.failures
			// No rule matched the inode for its other holders, but the
			// rules may for this one (commands, users); and a sweep's
			// look is no proof that no rule wants the inode: a holder
			// flipping a descriptor can make a sweep pair this inode with
			// another file's name. Matching again costs only the globs.
			again := in.st == stIgnored
			space, root, need, minFree := in.st == stNoSpace, in.spaceRoot, in.spaceNeed, in.spaceMin
			d.mu.Unlock()
			if space {
				return d.retrySpace(c, root, need, minFree)
			}
			if retry {
				d.logRetry(c, failures)
			}
			return retry || again
		}
		delete(d.inodes, key)
	}
	d.mu.Unlock()
	return true
}

// retrySpace says whether a file that did not fit is tried again now.
func (d *Daemon) retrySpace(c *scanner.Candidate, root string, need, minFree uint64) bool {
	if !d.spaceBack(root, need, minFree) {
		return false
	}
	d.log.Debug("room again at the destination, retrying", logging.Path("path", c.Path), zap.Int("pid", c.PID),
		zap.Int("fd", c.FD), zap.String("root", root))
	return true
}

func (d *Daemon) logRetry(c *scanner.Candidate, failures int) {
	d.log.Debug("retrying failed rescue", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD),
		zap.Int("failures", failures))
}

func (d *Daemon) reportOpen(c *scanner.Candidate, rule string) {
	d.m.Reports.Inc()
	d.ev.Open(c, rule)
}

// slot is what the stall watch knows of one worker.
type slot struct {
	mnt     atomic.Int64 // mount of the file under rescue
	busy    atomic.Int64 // unix ns of the last sign of life; 0 when idle
	retired atomic.Bool  // replaced: exits after its job
	release func()       // set (under Daemon.mu) when retired: clears the mount's mark
}

func (s *slot) touch() { s.busy.Store(time.Now().UnixNano()) }

// startWorker starts a worker with a slot of its own.
func (d *Daemon) startWorker(ctx context.Context, wg *sync.WaitGroup) {
	s := &slot{}
	d.mu.Lock()
	d.slots = append(d.slots, s)
	d.mu.Unlock()
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.worker(ctx, wg, s)
	}()
}

// watchStalls retires a worker whose rescue has made no progress for
// StallTimeout: a read or write in a filesystem that stopped answering
// never returns, and the thread cannot be taken back. The file's mount is
// marked unresponsive (its other files are skipped until the call
// returns) and a new worker takes the stuck one's place, up to
// maxStalledWorkers.
func (d *Daemon) watchStalls(ctx context.Context, wg *sync.WaitGroup) {
	t := time.NewTicker(min(time.Second, d.opt.StallTimeout/4))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now().UnixNano()
		d.mu.Lock()
		var stuck []*slot
		for _, s := range d.slots {
			if b := s.busy.Load(); b != 0 && !s.retired.Load() && now-b > int64(d.opt.StallTimeout) {
				s.retired.Store(true)
				stuck = append(stuck, s)
			}
		}
		d.mu.Unlock()
		for _, s := range stuck {
			mnt := int(s.mnt.Load())
			rel := d.guard.Hold(mnt)
			d.mu.Lock()
			s.release = rel
			replace := d.stalled < maxStalledWorkers
			if replace {
				d.stalled++
			}
			d.mu.Unlock()
			d.log.Warn("rescue stalled", zap.Int("mnt_id", mnt), zap.Duration("no_progress_for", d.opt.StallTimeout),
				zap.Bool("replaced", replace))
			if replace {
				d.startWorker(ctx, wg)
			}
		}
	}
}

// worker rescues queued pins until ctx ends, or until it was found stuck
// and replaced.
func (d *Daemon) worker(ctx context.Context, wg *sync.WaitGroup, s *slot) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-d.jobs:
			// select picks at random among ready cases: a job taken
			// after shutdown began is released, not started only to
			// be cancelled.
			if ctx.Err() != nil {
				d.abandon(j)
				return
			}
			s.mnt.Store(int64(j.c.MntID))
			s.touch()
			if j.prior != nil {
				d.resume(ctx, j, wg, s.touch)
			} else {
				d.rescue(ctx, j, wg, s.touch)
			}
			s.busy.Store(0)
			if s.retired.Load() {
				d.mu.Lock()
				rel := s.release
				d.mu.Unlock()
				if rel != nil {
					rel()
				}
				d.log.Info("stalled rescue returned", zap.Int("mnt_id", j.c.MntID))
				return
			}
		}
	}
}

func (d *Daemon) rescue(ctx context.Context, j *job, wg *sync.WaitGroup, progress func()) {
	c := &j.c
	pol := d.pol.Load()
	dec := pol.DecideRule(c, j.rule)
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
		d.ev.Skipped(c, dec.Reason, dec.Rule, dec.Detail)
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
	d.publishing.RLock()
	rs, err := d.engine.Rescue(ctx, j.pin, relink.Destination{
		Root: dec.Root, Via: dec.Via, Rel: dec.Rel, MinFreeBytes: dec.MinFreeBytes, Rule: dec.Rule,
		NoRoomToCopy: dec.NoRoomToCopy, Beneath: dec.Beneath, Methods: methods, Progress: progress,
	})
	d.publishing.RUnlock()
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
	res := rs.Result()
	d.m.Rescues.WithLabelValues(string(res.Method)).Inc()
	d.m.RescuedBytes.Add(float64(res.Bytes))
	if !dec.Follow || !c.Writable() {
		d.unpin(j, stRescued)
		return
	}
	d.follow(ctx, j, rs, wg)
}

// follow follows a rescued job's file until its last writer closes it,
// within the follow budget, and releases the pin then.
func (d *Daemon) follow(ctx context.Context, j *job, rs *relink.Rescued, wg *sync.WaitGroup) {
	c := &j.c
	res := rs.Result()
	d.mu.Lock()
	over := d.follows >= d.opt.MaxFollows
	warn := over && !d.followsWarned
	if over {
		d.followsWarned = true
	} else {
		d.follows++
	}
	d.mu.Unlock()
	if over {
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
		fres, err := rs.Follow(ctx)
		if err == nil && fres.Bytes > res.Bytes {
			d.m.RescuedBytes.Add(float64(fres.Bytes - res.Bytes))
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			d.m.Failures.Inc()
		}
		d.mu.Lock()
		d.follows--
		if d.followsWarned && d.follows == 0 {
			d.followsWarned = false
		}
		d.mu.Unlock()
		d.unpin(j, stRescued)
	}()
}

// pruner applies rescue.retention (age) and rescue.max_total_size to
// every rescue root, at start and every PruneInterval.
func (d *Daemon) pruner(ctx context.Context) {
	t := time.NewTicker(d.opt.PruneInterval)
	defer t.Stop()
	for {
		d.pruneAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pruneAll prunes every rescue root once, each while no rescue runs (see
// Daemon.publishing).
func (d *Daemon) pruneAll(ctx context.Context) {
	pol := d.pol.Load()
	for _, root := range pol.Roots() {
		if ctx.Err() != nil {
			return
		}
		d.publishing.Lock()
		res, err := pol.Prune(root)
		d.publishing.Unlock()
		if err != nil {
			d.log.Warn("prune failed", zap.String("root", root), zap.Error(err))
			continue
		}
		if res.Removed > 0 || res.StaleTemps > 0 {
			d.log.Info("rescued files pruned", zap.String("root", root), zap.Int("removed", res.Removed),
				zap.Uint64("removed_bytes", res.RemovedBytes), zap.Uint64("kept_bytes", res.Kept),
				zap.Int("stale_temps", res.StaleTemps))
		}
	}
}

// unpin releases a job's pin and records the inode's final state.
func (d *Daemon) unpin(j *job, st state) {
	d.release(j)
	interval := d.interval()
	d.mu.Lock()
	defer d.mu.Unlock()
	if in, ok := d.inodes[j.c.Key()]; ok {
		if st == stFailed {
			in.failed(j.found, interval)
		} else {
			in.st = st
		}
	}
}

// unpinNoSpace releases a job's pin for a file that did not fit in root:
// a copy needs need bytes there above minFree.
func (d *Daemon) unpinNoSpace(j *job, root string, need, minFree uint64) {
	d.release(j)
	d.mu.Lock()
	defer d.mu.Unlock()
	if in, ok := d.inodes[j.c.Key()]; ok {
		in.st, in.spaceRoot, in.spaceNeed, in.spaceMin = stNoSpace, root, need, minFree
	}
}

// spaceBack reports whether the destination of a file that did not fit
// has the room now (statfs, no more): only then is it tried again.
func (d *Daemon) spaceBack(root string, need, minFree uint64) bool {
	avail, _, err := d.pol.Load().FreeSpace(root)
	return err == nil && avail >= need+minFree
}

// abandon releases the pin of a job given up at shutdown and forgets its
// inode, so that nothing about it holds if it is looked at again.
func (d *Daemon) abandon(j *job) {
	d.release(j)
	d.mu.Lock()
	defer d.mu.Unlock()
	if in, ok := d.inodes[j.c.Key()]; ok && in.st == stQueued {
		delete(d.inodes, j.c.Key())
	}
}

// release closes a job's pin and takes it off the pin counts.
func (d *Daemon) release(j *job) {
	if err := j.pin.Close(); err != nil {
		d.log.Warn("release pin", zap.Int("pid", j.c.PID), zap.Int("fd", j.c.FD), zap.Error(err))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pins--
	d.pinned -= max(j.c.Size, 0)
	d.m.PinsHeld.Set(float64(d.pins))
	d.m.PinnedBytes.Set(float64(d.pinned))
	if len(d.deferred) > 0 {
		select {
		case d.room <- struct{}{}:
		default:
		}
	}
}

// takeDeferred returns the pids whose files waited for a pin, and ends
// the budget burst when there are none.
func (d *Daemon) takeDeferred() []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	pids := make([]int, 0, len(d.deferred))
	for pid := range d.deferred {
		pids = append(pids, pid)
	}
	clear(d.deferred)
	if len(pids) == 0 && d.pinsWarned {
		d.pinsWarned = false
		d.log.Info("rescue budget released", zap.Int("pins", d.pins))
	}
	return pids
}

// record sets the state of c's inode, creating its entry.
func (d *Daemon) record(c *scanner.Candidate, st state, now time.Time, btime int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.recordLocked(c, st, now, btime)
}

// recordFailure records a failed attempt at c's inode (see inode.failed).
func (d *Daemon) recordFailure(c *scanner.Candidate, now time.Time, btime int64) {
	interval := d.interval()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.recordLocked(c, stFailed, now, btime).failed(now, interval)
}

func (d *Daemon) recordLocked(c *scanner.Candidate, st state, now time.Time, btime int64) *inode {
	in, ok := d.inodes[c.Key()]
	if !ok {
		in = &inode{holders: make(map[holderID]time.Time), btime: btime}
		d.inodes[c.Key()] = in
	}
	// When it was looked at, not when its sweep started: a full pass
	// runs beside targeted sweeps, and forget must not drop what one of
	// them saw after the pass had read that process.
	at := time.Now()
	in.st, in.seen = st, at
	in.holders[holderID{pid: c.PID, start: c.StartTime}] = at
	return in
}

// notePID remembers that c's holder had a deleted file in its directory.
func (d *Daemon) notePID(c *scanner.Candidate, now time.Time) {
	dir := parentDir(c.Path)
	m := d.dirPIDs[dir]
	if m == nil {
		m = make(map[int]time.Time)
		d.dirPIDs[dir] = m
	}
	m[c.PID] = time.Now() // see recordLocked
}

// forget drops what the full sweep that started at start no longer
// showed: inodes closed by every holder (their numbers may be reused),
// holders that closed theirs or exited (their pids may be reused), and
// stale pid hints. Inodes still queued keep their entry.
func (d *Daemon) forget(start time.Time, listed []int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, in := range d.inodes {
		if in.st != stQueued && in.seen.Before(start) {
			delete(d.inodes, k)
			continue
		}
		for h, t := range in.holders {
			if t.Before(start) {
				delete(in.holders, h)
			}
		}
	}
	for dir, m := range d.dirPIDs {
		for pid, t := range m {
			if t.Before(start) {
				delete(m, pid)
			}
		}
		if len(m) == 0 {
			delete(d.dirPIDs, dir)
		}
	}
	clear(d.knownPID)
	for _, pid := range listed {
		d.knownPID[pid] = struct{}{}
	}
}

// apply installs a new configuration (from the main loop).
func (d *Daemon) apply(cfg *policy.Config) {
	oldPol := d.pol.Load()
	old := oldPol.Config()
	pol := policy.New(cfg, d.log, policy.WithProcRoot(d.opt.ProcRoot), policy.WithHostRoot(d.opt.HostRoot))
	// Keep the per-user grants and the rescue roots' usage.
	pol.Inherit(oldPol)
	d.pol.Store(pol)
	d.mu.Lock()
	for k, in := range d.inodes {
		// Reported files stay reported: their event is not repeated.
		if in.st == stSkipped || in.st == stFailed || in.st == stIgnored || in.st == stNoSpace {
			delete(d.inodes, k)
		}
	}
	d.mu.Unlock()
	d.track(cfg)
	if w := d.getWatcher(); w != nil {
		d.rootsMu.Lock()
		if cfg.Scan.Events {
			roots, _, _ := d.views.add(nil, watchRoots(cfg))
			w.SetRoots(roots)
		} else {
			w.SetRoots(nil)
		}
		d.rootsMu.Unlock()
	}
	fields := []zap.Field{zap.String("config", cfg.File), zap.Int("rules", len(cfg.Watch))}
	if old.Log != cfg.Log {
		fields = append(fields, zap.String("note", "log.level and log.format take effect at restart"))
	}
	if old.Metrics != cfg.Metrics {
		fields = append(fields, zap.String("note_metrics", "metrics.listen takes effect at restart"))
	}
	if old.Scan.Events != cfg.Scan.Events && d.getWatcher() == nil && cfg.Scan.Events {
		fields = append(fields, zap.String("note_events", "scan.events turned on takes effect at restart"))
	}
	d.log.Info("config reloaded", fields...)
}

func (d *Daemon) setWatcher(w *watch.Watcher) {
	d.mu.Lock()
	d.watcher = w
	d.mu.Unlock()
}

func (d *Daemon) getWatcher() *watch.Watcher {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.watcher
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

// parentDir returns the directory part of a holder-view path.
func parentDir(p []byte) string {
	s := string(p)
	if i := strings.LastIndexByte(s, '/'); i > 0 {
		return s[:i]
	}
	return "/"
}
