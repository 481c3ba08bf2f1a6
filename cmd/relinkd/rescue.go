package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/bmatcuk/doublestar/v4"
	flag "github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/logging"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/mounts"
	"github.com/relinkd/relinkd/pkg/pipeline"
	"github.com/relinkd/relinkd/pkg/policy"
	"github.com/relinkd/relinkd/pkg/relink"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// cmdRescue sweeps once and rescues the selected deleted-but-open files
// now: those matching GLOBs, --pid or --fd when given (no rule or size
// limit applies to an explicit selection, only min_free), else what the
// daemon would rescue now (a watch rule with action "rescue", within every
// configured limit; --to only replaces the location). Each inode is
// rescued once, to --to DIR or to the location the configuration chooses
// (a rescue dir on the same filesystem, else fs_dir at the root of the
// file's mount). It prints one line per file (one JSON object with --json)
// and fails when any rescue failed, or when an explicit selection matches
// no deleted-open file.
func cmdRescue(ctx context.Context, e env, args []string) error {
	o, err := parseRescueArgs(e, args)
	if err != nil {
		return err
	}
	log, cfg, methods, err := engineSetup(e, o.logLevel, o.configPath)
	if err != nil {
		return err
	}
	sc := scanner.New(scanner.Options{ProcRoot: o.mode.procRoot, Backend: cfg.Scan.Backend}, log)
	defer sc.Close()
	var res scanner.Result
	if o.pid > 0 {
		res, err = sc.SweepPIDs(ctx, []int{o.pid})
	} else {
		res, err = sc.Sweep(ctx)
	}
	if err != nil {
		return err
	}
	eng := relink.New(relink.Options{ProcRoot: o.mode.procRoot, Methods: methods, Sidecar: true}, log)
	r := &rescuer{
		o:    o,
		pol:  policy.New(cfg, log, o.mode.policyOptions()...),
		eng:  eng,
		pipe: pipeline.New(eng, log, pipeline.Options{}),
		out:  &reporter{w: e.stdout, json: o.asJSON},
		seen: map[scanner.Key]bool{},
	}
	switch {
	case o.explicit():
		r.decider = r.pol.Explicit(o.to)
	case o.to != "":
		r.onlyTo = policy.New(cfg, log, append(o.mode.policyOptions(), policy.WithOnlyRoot(o.to))...)
		r.decider = r.onlyTo
	default:
		r.decider = r.pol
	}
	for i := range res.Candidates {
		r.consider(ctx, &res.Candidates[i])
	}
	r.follows.Wait()
	return r.verdict(e.stderr)
}

// rescueOptions are the flags and globs of `relinkd rescue`.
type rescueOptions struct {
	configPath, to, logLevel string
	mode                     hostMode
	pid, fd                  int
	asJSON, follow           bool
	globs                    []string
}

// explicit reports whether files were selected by glob, --pid or --fd.
func (o *rescueOptions) explicit() bool { return len(o.globs) > 0 || o.pid > 0 }

// selects reports whether c is within the selection (everything when
// there is none).
func (o *rescueOptions) selects(c *scanner.Candidate) bool {
	if (o.pid > 0 && c.PID != o.pid) || (o.fd >= 0 && c.FD != o.fd) {
		return false
	}
	return matchAny(o.globs, string(c.Path))
}

// selection describes the selection for a message, as it was given.
func (o *rescueOptions) selection() string {
	var parts []string
	if o.pid > 0 {
		parts = append(parts, "--pid "+strconv.Itoa(o.pid))
	}
	if o.fd >= 0 {
		parts = append(parts, "--fd "+strconv.Itoa(o.fd))
	}
	for _, g := range o.globs {
		parts = append(parts, strconv.Quote(g))
	}
	return strings.Join(parts, " ")
}

const rescueSynopsis = "[FLAGS] [--] [GLOB…]"

func parseRescueArgs(e env, args []string) (rescueOptions, error) {
	var o rescueOptions
	fl := newFlagSet("rescue")
	fl.StringVar(&o.configPath, "config", "", "configuration `file` (default /etc/relinkd/relinkd.yaml, else embedded)")
	fl.StringVar(&o.to, "to", "", "rescue into `DIR` (created 0700) instead of the configured location")
	fl.IntVar(&o.pid, "pid", 0, "only files held by process `PID`")
	fl.IntVar(&o.fd, "fd", -1, "only descriptor `N` (with --pid)")
	fl.BoolVar(&o.asJSON, "json", false, "print one JSON object per line")
	fl.BoolVar(&o.follow, "follow", false, "keep appending what writers add until the last one closes the file")
	var hf hostFlags
	hf.add(fl)
	fl.StringVar(&o.logLevel, "log-level", "", "also log events as JSON on stderr at `LEVEL` (debug, info, warn, error)")
	globs, err := parseArgs(e.stdout, fl, rescueSynopsis, args)
	if err != nil {
		return o, err
	}
	o.globs = globs
	if o.mode, err = hf.resolve(fl); err != nil {
		return o, err
	}
	for _, g := range globs {
		if !doublestar.ValidatePattern(g) {
			return o, fmt.Errorf("%w: bad glob %q", errUsage, g)
		}
	}
	// The defaults (0, -1) mean "not given": a value given must be valid.
	given := map[string]bool{}
	fl.Visit(func(f *flag.Flag) { given[f.Name] = true })
	switch {
	case given["pid"] && o.pid <= 0:
		return o, fmt.Errorf("%w: --pid %d: not a process id", errUsage, o.pid)
	case given["fd"] && o.fd < 0:
		return o, fmt.Errorf("%w: --fd %d: not a descriptor", errUsage, o.fd)
	case o.fd >= 0 && o.pid <= 0:
		return o, fmt.Errorf("%w: --fd needs --pid", errUsage)
	}
	if o.to != "" {
		// Rescue roots are absolute, as in the configuration.
		if o.to, err = filepath.Abs(o.to); err != nil {
			return o, fmt.Errorf("--to: %w", err)
		}
	}
	return o, nil
}

// rescuer carries one `relinkd rescue` run across its candidates.
type rescuer struct {
	o   rescueOptions
	pol *policy.Policy // the configuration's policy
	// onlyTo, without an explicit selection but with --to, is the
	// policy whose only location is --to; nil otherwise.
	onlyTo *policy.Policy
	// decider decides for every file: pol.Explicit for an explicit
	// selection, else onlyTo with --to, else pol.
	decider pipeline.Decider
	eng     *relink.Engine // pins
	pipe    *pipeline.Pipeline
	out     *reporter
	seen    map[scanner.Key]bool
	follows sync.WaitGroup
}

// verdict fails the run when a rescue failed or an explicit selection
// matched no deleted-open file; nothing to do otherwise is only said.
func (r *rescuer) verdict(stderr io.Writer) error {
	out := r.out
	switch {
	case out.nfailed > 0:
		return fmt.Errorf("%d of %d rescues failed", out.nfailed, out.nfailed+out.nok)
	case out.nok+out.nskipped > 0:
		return nil
	case r.o.explicit():
		return fmt.Errorf("no deleted-open file matches %s", r.o.selection())
	}
	fmt.Fprintln(stderr, "no matching deleted-but-open file")
	return nil
}

// consider rescues c if it is selected and not rescued yet, and reports
// what became of it.
//
// The sweep's c is a first look only: its name and its inode come from
// separate reads of /proc, between which the holder may have pointed the
// descriptor at another file. So c is pinned first, and the selection,
// the rules and the policy (limits, per_user quota, location) then apply
// to the pinned file, whose name and inode the engine read through its
// own descriptor (relink.Pin refuses one that is not c).
func (r *rescuer) consider(ctx context.Context, c *scanner.Candidate) {
	if _, ok := r.wants(c); !ok {
		return
	}
	if err := ctx.Err(); err != nil {
		r.out.failed(c, err)
		return
	}
	p, err := r.eng.Pin(*c)
	if err != nil {
		switch {
		case errors.Is(err, relink.ErrVanished):
			r.out.skipped(c, "vanished")
		case errors.Is(err, relink.ErrIdentity):
			// The descriptor now refers to another file (or the pid to
			// another process): not the file that was selected.
			r.out.skipped(c, err.Error())
		case errors.Is(err, relink.ErrNotRegular):
			// Never opened for data (a memfd): not rescued, and not a
			// rescue failure to log, as in the daemon.
			r.out.failed(c, err)
		default:
			r.pipe.PinFailed(c, err)
			r.out.failed(c, err)
		}
		return
	}
	pc := p.Candidate()
	rule, ok := r.wants(&pc)
	if !ok {
		p.Close()
		return
	}
	out := r.pipe.Run(ctx, pipeline.Request{Pin: p, Rule: rule, Policy: r.decider})
	switch out.Kind {
	case pipeline.Ignored, pipeline.Reported:
		p.Close()
		return
	case pipeline.Rescued:
		r.seen[pc.Key()] = true
		r.rescued(ctx, &pc, out.Rescued)
		return
	}
	p.Close()
	r.seen[pc.Key()] = true
	dec := out.Decision
	switch {
	case out.Err != nil:
		// The engine's failure, cancellation or want of space: for a
		// rescue asked for now, each is a file not rescued.
		r.out.failed(&pc, out.Err)
	case r.o.explicit():
		// An explicit selection has no limit to skip for: the location
		// or its free space could not be found.
		r.out.failed(&pc, errors.New(dec.Detail))
	case r.o.to != "" && dec.Reason == policy.ReasonLocation:
		// Not a limit: the directory asked for cannot be used. The
		// policy logs why ("rescue dir refused"); its detail speaks
		// of the configuration WithOnlyRoot made, which would mislead.
		r.out.failed(&pc, fmt.Errorf("--to %s refused as a rescue root: it must be absent or a directory owned by root, "+
			"not writable by group or others, on a writable mount (--log-level warn says why): %w", r.o.to, mounts.ErrNoLocation))
	default:
		r.out.skipped(&pc, dec.Reason+": "+dec.Detail)
	}
}

// wants reports whether c is selected, not seen yet and, without an
// explicit selection, matched by a rule; and the rule that matches it, if
// any (matched once: the decision takes it from here).
func (r *rescuer) wants(c *scanner.Candidate) (config.Rule, bool) {
	if !r.o.selects(c) || r.seen[c.Key()] {
		return config.Rule{}, false
	}
	// The configured policy still keeps its own rescue directories out
	// when --to replaces them, and --to is kept out too.
	rule, ok := r.pol.Match(c)
	if ok && r.onlyTo != nil && r.onlyTo.InRescueDir(c) {
		ok = false
	}
	return rule, ok || r.o.explicit()
}

// rescued reports the rescued c, after following it in the background
// with --follow. It closes rs.
func (r *rescuer) rescued(ctx context.Context, c *scanner.Candidate, rs *pipeline.Rescue) {
	if !r.o.follow {
		rs.Close()
		r.out.result(c, rs.Result(), nil)
		return
	}
	r.follows.Add(1)
	go func() {
		defer r.follows.Done()
		defer rs.Close()
		fo := rs.Follow(ctx)
		switch fo.End {
		case pipeline.Finished, pipeline.Truncated:
			r.out.result(c, fo.Result, nil)
		case pipeline.Interrupted:
			// SIGINT or SIGTERM: the file is rescued, and the follow
			// made what it had appended durable; only the follow
			// ended early.
			r.out.stopped(c, fo.Result)
		default:
			r.out.failed(c, fo.Err)
		}
	}()
}

func parseMethods(names []string) ([]relink.Method, error) {
	var ms []relink.Method
	for _, n := range names {
		m, err := relink.ParseMethod(n)
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
	}
	return ms, nil
}

func matchAny(globs []string, path string) bool {
	if len(globs) == 0 {
		return true
	}
	for _, g := range globs {
		if ok, _ := doublestar.Match(g, path); ok {
			return true
		}
	}
	return false
}

// reporter prints one line per file; safe for concurrent follows.
type reporter struct {
	mu                     sync.Mutex
	w                      io.Writer
	json                   bool
	nok, nfailed, nskipped int
}

// rescueLine is one file's outcome, the JSON object of --json. Names that
// are not valid UTF-8 cannot be JSON strings exactly: as in `scan --json`
// and the log events, the name then has each invalid byte as U+FFFD and
// the _base64 field (present only then) holds the exact bytes.
type rescueLine struct {
	Path            string `json:"path"`
	PathBase64      string `json:"path_base64,omitempty"`
	PID             int    `json:"pid"`
	FD              int    `json:"fd"`
	RescuedTo       string `json:"rescued_to,omitempty"`
	RescuedToBase64 string `json:"rescued_to_base64,omitempty"`
	Method          string `json:"method,omitempty"`
	Bytes           int64  `json:"bytes,omitempty"`
	Duration        string `json:"duration,omitempty"`
	Followed        bool   `json:"followed,omitempty"`
	// FollowStopped: --follow was interrupted before the last writer
	// closed the file; what was appended so far is durable.
	FollowStopped bool   `json:"follow_stopped,omitempty"`
	Skipped       string `json:"skipped,omitempty"`
	Error         string `json:"error,omitempty"`
}

func (o *reporter) result(c *scanner.Candidate, r relink.Result, err error) {
	if err != nil {
		o.failed(c, err)
		return
	}
	o.print(rescued(c, r), &o.nok)
}

// stopped reports a file rescued whose follow was interrupted: a success.
func (o *reporter) stopped(c *scanner.Candidate, r relink.Result) {
	l := rescued(c, r)
	l.FollowStopped = true
	o.print(l, &o.nok)
}

func rescued(c *scanner.Candidate, r relink.Result) rescueLine {
	return rescueLine{Path: string(c.Path), PID: c.PID, FD: c.FD, RescuedTo: r.Path, Method: string(r.Method),
		Bytes: r.Bytes, Duration: r.Duration.String(), Followed: r.Followed}
}

func (o *reporter) failed(c *scanner.Candidate, err error) {
	o.print(rescueLine{Path: string(c.Path), PID: c.PID, FD: c.FD, Error: err.Error()}, &o.nfailed)
}

func (o *reporter) skipped(c *scanner.Candidate, why string) {
	o.print(rescueLine{Path: string(c.Path), PID: c.PID, FD: c.FD, Skipped: why}, &o.nskipped)
}

// print writes l, whose names hold the raw bytes.
func (o *reporter) print(l rescueLine, count *int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	*count++
	if o.json {
		l.Path, l.PathBase64 = jsonName(l.Path)
		l.RescuedTo, l.RescuedToBase64 = jsonName(l.RescuedTo)
		enc := json.NewEncoder(o.w)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(l)
		return
	}
	path := quoteIfNeeded(l.Path)
	switch {
	case l.Error != "":
		fmt.Fprintf(o.w, "%s (pid %d fd %d): not rescued: %s\n", path, l.PID, l.FD, l.Error)
	case l.Skipped != "":
		fmt.Fprintf(o.w, "%s (pid %d fd %d): skipped: %s\n", path, l.PID, l.FD, l.Skipped)
	case l.FollowStopped:
		fmt.Fprintf(o.w, "%s -> %s (%s, %d bytes; follow stopped early)\n", path, quoteIfNeeded(l.RescuedTo), l.Method, l.Bytes)
	default:
		fmt.Fprintf(o.w, "%s -> %s (%s, %d bytes)\n", path, quoteIfNeeded(l.RescuedTo), l.Method, l.Bytes)
	}
}

// engineSetup is what rescue and restore start with: the logger of
// --log-level (none without it), the configuration and its methods.
func engineSetup(e env, logLevel, configPath string) (*zap.Logger, *config.Config, []relink.Method, error) {
	log := zap.NewNop()
	if logLevel != "" {
		var err error
		if log, err = logging.New(e.stderr, logLevel, "json"); err != nil {
			return nil, nil, nil, fmt.Errorf("%w: %v", errUsage, err)
		}
	}
	cfg, _, err := config.Resolve(configPath)
	if err != nil {
		return nil, nil, nil, err
	}
	methods, err := parseMethods(cfg.Rescue.Methods)
	if err != nil {
		return nil, nil, nil, err
	}
	return log, cfg, methods, nil
}

// jsonName is logging.Name for a name held as a string.
func jsonName(name string) (s, b64 string) { return logging.Name([]byte(name)) }

// quoteIfNeeded quotes a path that holds spaces, quotes or control bytes
// (names may even hold newlines), so that one file stays one line.
func quoteIfNeeded(s string) string {
	q := strconv.Quote(s)
	if q[1:len(q)-1] == s && !strings.ContainsAny(s, " '") {
		return s
	}
	return q
}
