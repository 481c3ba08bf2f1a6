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
//
// Each job has one owner: the main loop (loop.go) serves events, ticks,
// reloads and the watchdog; the scheduler (scheduler.go) says which
// processes an event's sweep reads first and when every process is swept;
// the ledger (ledger.go) knows each inode seen and its outcome; the budget
// (budget.go) bounds pins and follows; the workers (workers.go) rescue
// what was pinned, watched for stalls; retention (retention.go) prunes
// the rescue roots. The ledger, scheduler and budget make no system call
// and are tested on made-up candidates.
package daemon

import (
	"errors"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/events"
	"github.com/relinkd/relinkd/internal/fsguard"
	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/metrics"
	"github.com/relinkd/relinkd/pkg/pipeline"
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

// Options configure a Daemon. Only Config is required.
type Options struct {
	Config     *config.Config
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
}

// Daemon is one running relinkd: the composition of small types, each
// owning its state behind its own lock or confined to one goroutine, and
// the glue between them (the fast path in consider.go, the rescue in
// rescue.go, the main loop in loop.go, reload in reload.go). No field
// below is guarded by Daemon itself: those not named as a type's are set
// by New and never changed, except pol (atomic) and considerMu.
type Daemon struct {
	opt     Options
	proc    procfs.FS // opt.ProcRoot
	log     *zap.Logger
	ev      events.Emitter // the rescue events, on log
	sweeper *scanner.Scanner
	m       *metrics.Metrics
	self    int

	pol    atomic.Pointer[policy.Policy] // swapped by reload
	engine *relink.Engine                // pins (rescues and adopts through pipe)
	pipe   *pipeline.Pipeline            // decides, rescues, follows and logs what became of each pinned file
	guard  *fsguard.Guard                // bounds calls on holders' filesystems

	// considerMu makes candidates considered one at a time, whichever
	// sweep found them (the loop's targeted ones or the full pass).
	considerMu sync.Mutex

	ledger    *ledger        // what is known of each deleted inode seen (ledger.go)
	sched     *scheduler     // which processes to sweep first, and when to sweep all (scheduler.go)
	budget    *budget        // pins, pinned bytes and follows held at once (budget.go)
	workers   *workers       // the rescue workers and their queue (workers.go)
	retention *pruner        // rescue.retention, never beside a rescue that publishes (retention.go)
	priors    *priors        // rescues made before this start (restart.go)
	views     *views         // watched trees in other mount namespaces (views.go)
	trees     *trees         // the watcher and its trees (trees.go)
	reload    chan reloadReq // Reload to the main loop (reload.go)
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
		opt:    opt,
		proc:   procfs.New(opt.ProcRoot),
		log:    log,
		ev:     events.New(log),
		m:      metrics.New(),
		self:   os.Getpid(),
		engine: relink.New(relink.Options{ProcRoot: opt.ProcRoot, Sidecar: true}, log),
		reload: make(chan reloadReq),
		ledger: newLedger(log),
		priors: &priors{},
		views:  newViews(opt.ProcRoot, opt.HostRoot),
	}
	d.trees = &trees{log: log, views: d.views}
	d.retention = &pruner{log: log, interval: opt.PruneInterval, policy: d.pol.Load}
	d.pipe = pipeline.New(d.engine, log, pipeline.Options{Publish: d.retention.publish})
	d.sched = newScheduler(d.proc, d.self, d.views)
	d.budget = newBudget(opt.MaxPins, opt.MaxPinnedBytes, opt.MaxFollows, d.m)
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
	d.workers = &workers{log: log, guard: d.guard, stall: opt.StallTimeout, do: d.handle, abandon: d.abandon,
		jobs: make(chan *job, opt.MaxPins)}
	d.sweeper = scanner.New(scanner.Options{ProcRoot: opt.ProcRoot, Guard: d.guard, Backend: opt.Config.Scan.Backend}, log)
	d.track(opt.Config)
	return d, nil
}

// track makes the sweeps feed the holder index with the watched trees of
// cfg.
func (d *Daemon) track(cfg *config.Config) { d.sweeper.Track(underRoots(watchRoots(cfg))) }

// describeMount names a mount id for the filesystem unresponsive event,
// from the host's mount table.
func (d *Daemon) describeMount(id int) (string, string) {
	ms, err := d.pol.Load().Host().Mounts()
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

func (d *Daemon) config() *config.Config { return d.pol.Load().Config() }

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

// forget drops what the full sweep that started at start no longer
// showed: inodes closed by every holder (their numbers may be reused),
// holders that closed theirs or exited (their pids may be reused), and
// stale pid hints. Inodes still queued keep their entry.
func (d *Daemon) forget(start time.Time, listed []int) {
	d.ledger.forget(start)
	d.sched.forget(start, listed)
}

// watchRoots returns the directory trees the rescue rules cover. Report
// rules are left to sweeps: there is no race to win for a report.
func watchRoots(cfg *config.Config) []string {
	var globs []string
	for _, r := range cfg.Watch {
		if r.Action == config.ActionRescue {
			globs = append(globs, r.Paths...)
		}
	}
	return watch.Roots(globs)
}
