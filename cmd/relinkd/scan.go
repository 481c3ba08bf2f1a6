package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/fsguard"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/policy"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// cmdScan runs one sweep and prints what it found: a table for people, or
// one JSON object per line for tools. It fails only when the sweep itself
// cannot run (no /proc); unreadable processes are counted, not fatal.
func cmdScan(ctx context.Context, e env, args []string) error {
	fl := newFlagSet("scan")
	configPath := fl.String("config", "", "configuration `file` (default /etc/relinkd/relinkd.yaml, else embedded)")
	all := fl.Bool("all", false, "list every deleted-but-open file, ignoring the watch rules")
	asJSON := fl.Bool("json", false, "print one JSON object per line")
	var hf hostFlags
	hf.add(fl)
	pos, err := parseArgs(e.stdout, fl, "[FLAGS]", args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: scan takes no arguments", errUsage)
	}
	mode, err := hf.resolve(fl)
	if err != nil {
		return err
	}
	cfg, _, err := config.Resolve(*configPath)
	if err != nil {
		return err
	}
	pol := policy.New(cfg, zap.NewNop(), mode.policyOptions()...)
	match := ruleMatcher(pol, *all)
	// A filesystem that does not answer must not hang the listing: the
	// stat that confirms a deletion is bounded (scan.fs_timeout) and what
	// it could not confirm is listed at the end.
	timeout := time.Duration(cfg.Scan.FSTimeout)
	if timeout <= 0 {
		timeout = fsguard.DefaultTimeout
	}
	guard := fsguard.New(fsguard.Options{Timeout: timeout}, zap.NewNop())
	sc := scanner.New(scanner.Options{ProcRoot: mode.procRoot, Guard: guard, Backend: cfg.Scan.Backend}, zap.NewNop())
	defer sc.Close()
	res, err := sc.Sweep(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	for _, u := range res.Unanswered {
		fmt.Fprintf(e.stderr, "not inspected, its filesystem is not answering: pid %d fd %d %s (mnt_id %d)\n",
			u.PID, u.FD, displayPath(u.Path), u.MntID)
	}
	var rows []row
	for i := range res.Candidates {
		c := &res.Candidates[i]
		rule, ok := match(c)
		if !ok {
			continue
		}
		rows = append(rows, row{c, rule})
	}
	sum := summarize(pol, rows, res.Candidates)
	if *asJSON {
		if err := printJSON(e.stdout, rows); err != nil {
			return err
		}
		return printSummaryJSON(e.stdout, sum)
	}
	if err := printTable(e.stdout, rows); err != nil {
		return err
	}
	if err := printSummary(e.stdout, sum); err != nil {
		return err
	}
	read := fmt.Sprintf("%d processes, %d descriptors read", res.Procs, res.FDs)
	if backend, _ := sc.Backend(); backend == scanner.BackendBPF {
		read = fmt.Sprintf("every descriptor table walked in the kernel (bpf), %d processes hold them", res.Procs)
	}
	fmt.Fprintf(e.stderr, "%d deleted-but-open file(s); %s; %d vanished, %d not inspectable, %d on filesystems not answering\n",
		len(rows), read, res.Vanished, res.Denied, len(res.Unanswered))
	return nil
}

type row struct {
	c    *scanner.Candidate
	rule string
}

func printJSON(w io.Writer, rows []row) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for _, r := range rows {
		if err := enc.Encode(r.c.Record(r.rule)); err != nil {
			return err
		}
	}
	return nil
}

func printTable(w io.Writer, rows []row) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tCOMM\tUID\tFD\tSIZE\tNLINK\tRULE\tPATH")
	for _, r := range rows {
		c := r.c
		rule := r.rule
		if rule == "" {
			rule = "-"
		}
		// A process sets its own comm (prctl PR_SET_NAME), so it is quoted
		// like a path: a newline in it must not forge a row.
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", c.PID, displayPath([]byte(c.Comm)), c.UID, c.FD, c.Size, c.Nlink, rule, displayPath(c.Path))
	}
	return tw.Flush()
}

// displayPath prints a path (or another name a process chose) as is when
// it is printable UTF-8, else Go-quoted so that a newline or a stray byte
// cannot forge a table row.
func displayPath(p []byte) string {
	if utf8.Valid(p) {
		printable := true
		for _, r := range string(p) {
			if !unicode.IsPrint(r) {
				printable = false
				break
			}
		}
		if printable {
			return string(p)
		}
	}
	return strconv.Quote(string(p))
}
