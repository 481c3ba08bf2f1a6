package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bmatcuk/doublestar/v4"
	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/logging"
	"github.com/relinkd/relinkd/pkg/policy"
	"github.com/relinkd/relinkd/pkg/relink"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// cmdRescue sweeps once and rescues the selected deleted-but-open files
// now: those matching PATH_GLOBs, --pid or --fd when given (no rule or
// size limit applies to an explicit selection, only min_free), else what
// the daemon would rescue now (a watch rule with action "rescue", within
// the configured limits). Each inode is rescued once, to --to DIR or to the
// location the configuration chooses (a rescue dir on the same filesystem,
// else fs_dir at the root of the file's mount). It prints one line per file
// (one JSON object with --json) and fails when any rescue failed.
func cmdRescue(ctx context.Context, e env, args []string) error {
	fl := flag.NewFlagSet("rescue", flag.ContinueOnError)
	fl.SetOutput(e.stderr)
	configPath := fl.String("config", "", "configuration `file` (default /etc/relinkd/relinkd.yaml, else embedded)")
	to := fl.String("to", "", "rescue into `DIR` (created 0700) instead of the configured location")
	pid := fl.Int("pid", 0, "only files held by process `PID`")
	fd := fl.Int("fd", -1, "only descriptor `N` (with --pid)")
	asJSON := fl.Bool("json", false, "print one JSON object per line")
	follow := fl.Bool("follow", false, "keep appending what writers add until the last one closes the file")
	procRoot := fl.String("proc", "/proc", "procfs mount `point`")
	logLevel := fl.String("log-level", "", "also log events as JSON on stderr at `LEVEL` (debug, info, warn, error)")
	if err := fl.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	globs := fl.Args()
	for _, g := range globs {
		if !doublestar.ValidatePattern(g) {
			return fmt.Errorf("%w: bad glob %q", errUsage, g)
		}
	}
	if *fd >= 0 && *pid <= 0 {
		return fmt.Errorf("%w: --fd needs --pid", errUsage)
	}
	log := zap.NewNop()
	if *logLevel != "" {
		l, err := logging.New(e.stderr, *logLevel, "json")
		if err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		log = l
	}
	cfg, _, err := policy.Resolve(*configPath)
	if err != nil {
		return err
	}
	methods, err := parseMethods(cfg.Rescue.Methods)
	if err != nil {
		return err
	}
	pol := policy.New(cfg, log)

	sc := scanner.New(scanner.Options{ProcRoot: *procRoot}, log)
	var res scanner.Result
	if *pid > 0 {
		res, err = sc.SweepPIDs(ctx, []int{*pid})
	} else {
		res, err = sc.Sweep(ctx)
	}
	if err != nil {
		return err
	}
	explicit := len(globs) > 0 || *pid > 0
	eng := relink.New(relink.Options{ProcRoot: *procRoot, Methods: methods, Sidecar: true}, log)
	out := &reporter{w: e.stdout, json: *asJSON}
	seen := map[scanner.Key]bool{}
	var follows sync.WaitGroup
	for i := range res.Candidates {
		c := &res.Candidates[i]
		if (*pid > 0 && c.PID != *pid) || (*fd >= 0 && c.FD != *fd) || !matchAny(globs, string(c.Path)) {
			continue
		}
		if seen[c.Key()] {
			continue
		}
		if err := ctx.Err(); err != nil {
			out.failed(c, err)
			continue
		}
		var dest relink.Destination
		engine := eng
		if explicit || *to != "" {
			// --to alone takes what the rescue rules match; an
			// explicit selection takes what it names.
			rule := ""
			r, ok := pol.Match(c)
			if ok {
				rule = r.Name
			}
			if !explicit && (!ok || r.Action != policy.ActionRescue) {
				continue
			}
			if dest, err = destination(c, *to, rule, cfg, pol); err != nil {
				seen[c.Key()] = true
				out.failed(c, err)
				continue
			}
		} else {
			// No selection: do what the daemon would do now, limits
			// included.
			d := pol.Decide(c)
			switch d.Action {
			case policy.Skip:
				seen[c.Key()] = true
				out.skipped(c, d.Reason+": "+d.Detail)
				continue
			case policy.Rescue:
			default:
				continue
			}
			ms, err := parseMethods(d.Methods)
			if err != nil {
				return err
			}
			engine = relink.New(relink.Options{ProcRoot: *procRoot, Methods: ms, Sidecar: true}, log)
			dest = relink.Destination{Root: d.Root, Rel: d.Rel, MinFreeBytes: d.MinFreeBytes, Rule: d.Rule}
		}
		seen[c.Key()] = true
		p, err := engine.Pin(*c)
		if errors.Is(err, relink.ErrVanished) {
			out.skipped(c, "vanished")
			continue
		}
		if err != nil {
			out.failed(c, err)
			continue
		}
		r, err := engine.Rescue(ctx, p, dest)
		if err != nil || !*follow {
			p.Close()
			out.result(c, r, err)
			continue
		}
		follows.Add(1)
		go func() {
			defer follows.Done()
			defer p.Close()
			if fr, err := engine.Follow(ctx, p); err == nil {
				r = fr
			} else {
				out.failed(c, err)
				return
			}
			out.result(c, r, nil)
		}()
	}
	follows.Wait()
	if out.nfailed > 0 {
		return fmt.Errorf("%d of %d rescues failed", out.nfailed, out.nfailed+out.nok)
	}
	if out.nok == 0 && out.nskipped == 0 {
		fmt.Fprintln(e.stderr, "no matching deleted-but-open file")
	}
	return nil
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

// destination is --to DIR, or the location the policy chooses for c, with
// the configured min_free of that filesystem.
func destination(c *scanner.Candidate, to, rule string, cfg *policy.Config, pol *policy.Policy) (relink.Destination, error) {
	root := to
	if root == "" {
		loc, err := pol.Locate(c)
		if err != nil {
			return relink.Destination{}, err
		}
		root = loc.Root
	}
	_, total, err := policy.FreeSpace(root)
	if err != nil {
		return relink.Destination{}, err
	}
	return relink.Destination{
		Root:         root,
		Rel:          policy.RelName(c, time.Now()),
		MinFreeBytes: cfg.Rescue.MinFree.Floor(total),
		Rule:         rule,
	}, nil
}

// reporter prints one line per file; safe for concurrent follows.
type reporter struct {
	mu                     sync.Mutex
	w                      io.Writer
	json                   bool
	nok, nfailed, nskipped int
}

type rescueLine struct {
	Path      string `json:"path"`
	PID       int    `json:"pid"`
	FD        int    `json:"fd"`
	RescuedTo string `json:"rescued_to,omitempty"`
	Method    string `json:"method,omitempty"`
	Bytes     int64  `json:"bytes,omitempty"`
	Duration  string `json:"duration,omitempty"`
	Followed  bool   `json:"followed,omitempty"`
	Skipped   string `json:"skipped,omitempty"`
	Error     string `json:"error,omitempty"`
}

func (o *reporter) result(c *scanner.Candidate, r relink.Result, err error) {
	if err != nil {
		o.failed(c, err)
		return
	}
	o.print(rescueLine{Path: string(c.Path), PID: c.PID, FD: c.FD, RescuedTo: r.Path, Method: string(r.Method),
		Bytes: r.Bytes, Duration: r.Duration.String(), Followed: r.Followed}, &o.nok)
}

func (o *reporter) failed(c *scanner.Candidate, err error) {
	o.print(rescueLine{Path: string(c.Path), PID: c.PID, FD: c.FD, Error: err.Error()}, &o.nfailed)
}

func (o *reporter) skipped(c *scanner.Candidate, why string) {
	o.print(rescueLine{Path: string(c.Path), PID: c.PID, FD: c.FD, Skipped: why}, &o.nskipped)
}

func (o *reporter) print(l rescueLine, count *int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	*count++
	if o.json {
		b, _ := json.Marshal(l)
		fmt.Fprintf(o.w, "%s\n", b)
		return
	}
	path := quoteIfNeeded(l.Path)
	switch {
	case l.Error != "":
		fmt.Fprintf(o.w, "%s (pid %d fd %d): not rescued: %s\n", path, l.PID, l.FD, l.Error)
	case l.Skipped != "":
		fmt.Fprintf(o.w, "%s (pid %d fd %d): skipped: %s\n", path, l.PID, l.FD, l.Skipped)
	default:
		fmt.Fprintf(o.w, "%s -> %s (%s, %d bytes)\n", path, quoteIfNeeded(l.RescuedTo), l.Method, l.Bytes)
	}
}

// quoteIfNeeded quotes a path that holds spaces, quotes or control bytes
// (names may even hold newlines), so that one file stays one line.
func quoteIfNeeded(s string) string {
	q := strconv.Quote(s)
	if q[1:len(q)-1] == s && !strings.ContainsAny(s, " '") {
		return s
	}
	return q
}
