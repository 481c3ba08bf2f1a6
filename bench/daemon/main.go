// Command daemon benchmarks `relinkd run`:
//
//   - race window: holders that delete a file and exit 2, 5 or 20 ms later;
//     the share rescued, with sweeps an hour apart, so that only the
//     directory-event path can catch them. Four kinds of holder:
//     new (started just before), old (started before the daemon, holding
//     its file since then, told over a pipe when to delete it), and two
//     container kinds in their own mount and PID namespaces (unshare):
//     container-bind sees the watched directory through a bind mount,
//     container-tmpfs writes to a private tmpfs at a watched path of its
//     own view. Each on an idle host and on a busy one (400 processes ×
//     100 open files, a few of each inside the watched tree);
//   - idle cost: CPU time and peak RSS of the daemon over 60 s with 40,000
//     and 50,000 open descriptors (sweeps every 30 s), and with the default
//     configuration at 50,000.
//
// Run as root from the repository root: go run ./bench/daemon
// (-only new,old,container, -hosts idle,busy, -trials N, -idle 0 to skip
// the idle cost; -follow=false, -churn N and -gap D vary the race's
// conditions; -log FILE keeps the daemons' debug log and every trial, to
// see what the daemon was doing when it missed one).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/relinkd/relinkd/internal/benchbin"
)

// holderEnv carries a holder's job to a copy of this program (see holder).
const holderEnv = "RELINKD_BENCH_HOLDER"

func main() {
	if spec, ok := os.LookupEnv(holderEnv); ok {
		os.Exit(holder(spec))
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/daemon:", err)
		os.Exit(1)
	}
}

// holder runs one holder process. spec is MODE|PATH|DELAY:
//
//   - new: create PATH, write 4 KiB, delete it, linger DELAY, exit;
//   - old: create PATH, write 4 KiB, say "ready" on stdout, then idle
//     until a byte arrives on stdin; delete PATH, linger DELAY, exit.
//
// Exiting closes the descriptor: after that the file is gone for good
// unless the daemon pinned it.
func holder(spec string) int {
	parts := strings.SplitN(spec, "|", 3)
	if len(parts) != 3 {
		fmt.Fprintf(os.Stderr, "holder: bad spec %q\n", spec)
		return 2
	}
	mode, path := parts[0], parts[1]
	linger, err := time.ParseDuration(parts[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "holder:", err)
		return 2
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "holder:", err)
		return 1
	}
	buf := []byte(strings.Repeat("relinkd race window\n", 205))[:4096]
	if _, err := f.Write(buf); err != nil {
		fmt.Fprintln(os.Stderr, "holder:", err)
		return 1
	}
	if mode == "old" {
		fmt.Println("ready")
		var cmd [1]byte
		if n, _ := os.Stdin.Read(cmd[:]); n != 1 {
			return 1 // the bench went away: keep the file
		}
	}
	if err := os.Remove(path); err != nil {
		fmt.Fprintln(os.Stderr, "holder:", err)
		return 1
	}
	time.Sleep(linger)
	// f stays open until the process exits.
	runtime.KeepAlive(f)
	return 0
}

type options struct {
	bin       string
	trials    int
	delays    []string
	kinds     []string
	hosts     []string
	wait      time.Duration
	gap       time.Duration // pause between two trials
	churn     int           // short-lived processes a second during the race
	hogs      int           // CPU-bound processes during the race
	nice      int           // the daemons' nice value (the shipped unit's Nice=)
	oldPerDir int
	busyProcs int
	busyFDs   int
	inTree    int
	idle      time.Duration
	idleProcs []int
	follow    bool
	backend   string   // scan.backend; "" is the default (auto)
	log       *lineLog // the race daemons' log at debug level and the trials (-log), or nil
}

func (o *options) logLevel() string {
	if o.log != nil {
		return "debug"
	}
	return "info"
}

// lineLog appends whole lines to a file from several goroutines: the
// daemon's log lines and the bench's own records of its trials, for
// finding out afterwards what the daemon was doing when it missed one.
type lineLog struct {
	mu sync.Mutex
	w  io.Writer
}

// line writes b and a newline; a nil lineLog discards it.
func (l *lineLog) line(b []byte) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(append(b[:len(b):len(b)], '\n'))
}

// record writes v as one JSON line.
func (l *lineLog) record(v any) {
	if l == nil {
		return
	}
	b, err := json.Marshal(v)
	if err == nil {
		l.line(b)
	}
}

func run() error {
	var o options
	trials := flag.Int("trials", 100, "race trials per kind, delay and host (0 skips the race)")
	delays := flag.String("delays", "2ms,5ms,20ms", "holder lifetimes after the unlink")
	only := flag.String("only", "new,old,container", "holder kinds: new, old, container (both container kinds), container-bind, container-tmpfs")
	hosts := flag.String("hosts", "idle,busy", "hosts to run the race on: idle, busy")
	wait := flag.Duration("wait", 300*time.Millisecond, "how long a trial waits for its rescue before the next starts (a late one still counts)")
	flag.DurationVar(&o.gap, "gap", 0, "pause between two trials (quiet time between unlinks)")
	flag.IntVar(&o.churn, "churn", 0, "during the race, also start about this many short-lived processes a second (/bin/true)")
	flag.IntVar(&o.hogs, "hogs", 0, "during the race, also keep this many CPU-bound processes running (a host whose cores are busy)")
	flag.IntVar(&o.nice, "nice", 0, "run the daemons at this nice value (the shipped unit has Nice=5)")
	oldPerDir := flag.Int("old-per-dir", 10, "old holders per directory")
	busyProcs := flag.Int("busy-procs", 400, "busy host: processes")
	busyFDs := flag.Int("busy-fds", 100, "busy host: open files per process")
	inTree := flag.Int("in-tree", 3, "busy host: of those, files inside the watched tree")
	idle := flag.Duration("idle", 60*time.Second, "idle cost window (0 skips the idle cost)")
	idleProcs := flag.String("idle-procs", "400,500", "idle cost: processes (of -busy-fds open files each), one measurement each")
	flag.BoolVar(&o.follow, "follow", true, "race: rescue.follow (a holder writes its file, so each rescue is followed until it exits)")
	logFile := flag.String("log", "", "append the race daemons' log, at debug level, to this file")
	flag.StringVar(&o.backend, "backend", "", "scan.backend of the daemons: auto (the default), proc or bpf")
	flag.StringVar(&o.bin, "bin", "", "relinkd binary (default: go build ./cmd/relinkd into a temp dir)")
	flag.Parse()
	o.trials, o.wait, o.oldPerDir = *trials, *wait, max(1, *oldPerDir)
	o.busyProcs, o.busyFDs, o.inTree, o.idle = *busyProcs, *busyFDs, *inTree, *idle
	o.delays = splitList(*delays)
	for _, d := range o.delays {
		if _, err := time.ParseDuration(d); err != nil {
			return fmt.Errorf("-delays: %w", err)
		}
	}
	for _, k := range splitList(*only) {
		switch k {
		case "new", "old", kindBind, kindTmpfs:
			o.kinds = append(o.kinds, k)
		case "container":
			o.kinds = append(o.kinds, kindBind, kindTmpfs)
		default:
			return fmt.Errorf("-only: unknown kind %q", k)
		}
	}
	for _, h := range splitList(*hosts) {
		if h != "idle" && h != "busy" {
			return fmt.Errorf("-hosts: unknown host %q", h)
		}
		o.hosts = append(o.hosts, h)
	}
	for _, s := range splitList(*idleProcs) {
		var n int
		if _, err := fmt.Sscan(s, &n); err != nil || n <= 0 {
			return fmt.Errorf("-idle-procs: bad count %q", s)
		}
		o.idleProcs = append(o.idleProcs, n)
	}
	if o.inTree > o.busyFDs {
		return errors.New("-in-tree exceeds -busy-fds")
	}
	if *logFile != "" {
		f, err := os.OpenFile(*logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		o.log = &lineLog{w: f}
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root (the daemon reads other processes' descriptors; containers need mounts)")
	}
	tmp, err := os.MkdirTemp("", "relinkd-bench-daemon-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if o.bin == "" {
		if o.bin, err = benchbin.Build(tmp); err != nil {
			return err
		}
	}
	fmt.Printf("tree %s; load at start: %s\n", treeCommit(), loadavg())
	began := time.Now()
	if o.trials > 0 && len(o.kinds) > 0 && len(o.hosts) > 0 {
		if err := race(&o, tmp); err != nil {
			return err
		}
	}
	if o.idle > 0 && len(o.idleProcs) > 0 {
		if err := idleCosts(&o, tmp); err != nil {
			return err
		}
	}
	fmt.Printf("load at end: %s; total %v\n", loadavg(), time.Since(began).Round(time.Second))
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// loadavg returns the first three fields of /proc/loadavg (proc(5)).
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// treeCommit names the commit the binary is built from, "-dirty" when the
// tree has changes.
func treeCommit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty", "--abbrev=12").Output()
	if err != nil {
		return "(not a git tree)"
	}
	return strings.TrimSpace(string(out))
}
