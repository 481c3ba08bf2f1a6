package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/bmatcuk/doublestar/v4"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/layout"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/mounts"
	"github.com/relinkd/relinkd/pkg/policy"
	"github.com/relinkd/relinkd/pkg/relink"
)

// setWindow is how far apart in time the rescues of one round may be: the
// daemon rescues the files one deletion (or one sweep) finds within
// seconds of each other, a busy worker pool delaying some by a copy or two.
const setWindow = time.Minute

// restoreOptions are the flags and arguments of `relinkd restore`.
type restoreOptions struct {
	configPath, to, logLevel string
	force, dryRun, asJSON    bool
	args                     []string
	mode                     hostMode
}

const restoreSynopsis = "[FLAGS] [--] RESCUED_OR_GLOB…"

func parseRestoreArgs(e env, args []string) (restoreOptions, error) {
	var o restoreOptions
	fl := newFlagSet("restore")
	fl.StringVar(&o.configPath, "config", "", "configuration `file` (default /etc/relinkd/relinkd.yaml, else embedded)")
	fl.StringVar(&o.to, "to", "", "restore into directory `PATH` (created if missing), or as file PATH when one file is restored")
	fl.BoolVar(&o.force, "force", false, "replace an existing file (atomically, by rename over it)")
	fl.BoolVar(&o.dryRun, "dry-run", false, "say what would be done; write nothing")
	fl.BoolVar(&o.asJSON, "json", false, "print one JSON object per line")
	fl.StringVar(&o.logLevel, "log-level", "", "also log events as JSON on stderr at `LEVEL` (debug, info, warn, error)")
	var hf hostFlags
	hf.add(fl)
	pos, err := parseArgs(e.stdout, fl, restoreSynopsis, args)
	if err != nil {
		return o, err
	}
	if o.mode, err = hf.resolve(fl); err != nil {
		return o, err
	}
	if len(pos) == 0 {
		return o, fmt.Errorf("%w: restore: name the rescued files (their paths, or globs on their original paths)", errUsage)
	}
	for _, a := range pos {
		// A rescued file's own name need not be a valid glob.
		if _, err := os.Lstat(a); err != nil && !doublestar.ValidatePattern(a) {
			return o, fmt.Errorf("%w: bad glob %q", errUsage, a)
		}
	}
	o.args = pos
	if o.to != "" {
		dir := strings.HasSuffix(o.to, "/")
		if o.to, err = filepath.Abs(o.to); err != nil {
			return o, fmt.Errorf("--to: %w", err)
		}
		if dir && o.to != "/" {
			o.to += "/"
		}
	}
	return o, nil
}

// item is one file to restore.
type item struct {
	r      *rescue
	t      relink.Target
	set    int    // its set (see groupSets)
	refuse string // why it is refused before anything is looked at
}

// cmdRestore puts rescued files back (see README "After a rescue"): each
// selected file, with the companions of its set, under its original name
// or under --to, with the engine's ladder, never replacing a file without
// --force and never writing through a symlink. A set is checked whole
// before any of it is written. It prints one line per file and fails when
// any file was not restored (or, with --dry-run, would not be).
func cmdRestore(ctx context.Context, e env, args []string) error {
	o, err := parseRestoreArgs(e, args)
	if err != nil {
		return err
	}
	log, cfg, methods, err := engineSetup(e, o.logLevel, o.configPath)
	if err != nil {
		return err
	}
	pol := policy.New(cfg, log, o.mode.policyOptions()...)
	eng := relink.New(relink.Options{ProcRoot: o.mode.procRoot, Methods: methods}, log)
	all, errs := findRescues(pol)
	for _, err := range errs {
		fmt.Fprintf(e.stderr, "relinkd: %v\n", err)
	}
	out := &restoreReporter{w: e.stdout, json: o.asJSON}
	sel := selectRescues(all, o.args, out)
	sets := groupSets(all)
	items := planRestore(all, sel, sets, o, pol)
	for _, set := range bySet(items) {
		restoreSet(ctx, eng, pol, cfg, set, o, out)
	}
	if n := out.nbad; n > 0 {
		return fmt.Errorf("%d of %d not restored", n, n+out.nok)
	}
	return nil
}

// selectRescues returns the indexes in all of the rescues args name: a
// rescued file's path (or its sidecar's), or a glob on the original path
// of a trusted sidecar. An argument that names nothing is reported.
func selectRescues(all []rescue, args []string, out *restoreReporter) []int {
	var sel []int
	for _, a := range args {
		// A rescued file's path (or its sidecar's), absolute or not.
		exact, _ := filepath.Abs(strings.TrimSuffix(a, layout.SidecarSuffix))
		n := 0
		for i := range all {
			r := &all[i]
			if exact == r.path || r.believed() && matchAny([]string{a}, r.original()) {
				if !slices.Contains(sel, i) {
					sel = append(sel, i)
				}
				n++
			}
		}
		if n == 0 {
			out.print(restoreLine{Arg: a, Status: "unmatched", Error: "no rescued file matches"}, &out.nbad)
		}
	}
	return sel
}

// groupSets gives each rescue whose sidecar is believed a set number (from 1; 0 for the
// others): files rescued in one round from one directory, as the holder
// saw it (and in one container, to one root). A round starts with its
// oldest file and takes those rescued within setWindow of it.
func groupSets(all []rescue) []int {
	sets := make([]int, len(all))
	type key struct {
		dir, container, root string
		mntns                uint64
	}
	byKey := map[key][]int{}
	for i := range all {
		if r := &all[i]; r.believed() {
			k := key{filepath.Dir(r.original()), r.sc.ContainerID, r.root, r.sc.MntNS}
			byKey[k] = append(byKey[k], i)
		}
	}
	n := 0
	for _, idx := range byKey {
		slices.SortFunc(idx, func(a, b int) int { return all[a].at.Compare(all[b].at) })
		var start time.Time
		for j, i := range idx {
			if j == 0 || all[i].at.Sub(start) > setWindow {
				n++
				start = all[i].at
			}
			sets[i] = n
		}
	}
	return sets
}

// planRestore adds to the selection the companions of each file in its
// set (files whose names extend its name: app.db → app.db-wal, app.db-shm,
// app.db-journal) and says where each goes.
func planRestore(all []rescue, sel []int, sets []int, o restoreOptions, pol *policy.Policy) []item {
	chosen := slices.Clone(sel)
	for _, i := range sel {
		r := &all[i]
		if !r.believed() {
			continue
		}
		base := filepath.Base(r.original())
		for j := range all {
			c := &all[j]
			if j != i && sets[j] == sets[i] && !slices.Contains(chosen, j) {
				if b := filepath.Base(c.original()); len(b) > len(base) && strings.HasPrefix(b, base) {
					chosen = append(chosen, j)
				}
			}
		}
	}
	toDir := strings.HasSuffix(o.to, "/") || len(chosen) > 1
	if fi, err := os.Lstat(o.to); o.to != "" && err == nil && fi.IsDir() {
		toDir = true
	}
	items := make([]item, 0, len(chosen))
	targets := map[string]int{}
	for _, i := range chosen {
		r := &all[i]
		it := item{r: r, set: sets[i]}
		if it.set == 0 {
			it.set = -1 - i // a set of its own
		}
		switch {
		case !r.trusted():
			it.refuse = fmt.Sprintf("sidecar %s: %s", r.status, r.problem)
		case o.to == "" && (r.sc.ContainerID != "" || filepath.Clean(r.root) == filepath.Clean(pol.Config().Rescue.ContainerDir)):
			it.refuse = fmt.Sprintf("held in container %s: %s is a path in the container's view, not the host's (restore with --to)",
				shortID(layout.ContainerName(holderOf(&r.sc))), quoteIfNeeded(r.original()))
		case o.to == "":
			// The original name, in the host's view. Its directory must
			// be on the filesystem the file was on: otherwise the name
			// was the holder's view in another mount namespace (a
			// container's) or the mounts have changed since.
			it.t = relink.Target{Path: r.original(), Via: pol.Host().Via(), Dev: r.sc.Dev}
		case toDir:
			it.t = relink.Target{Path: filepath.Join(o.to, filepath.Base(r.original())), Mkdir: true}
		default:
			it.t = relink.Target{Path: o.to, Mkdir: true}
		}
		it.t.Replace = o.force
		if it.refuse == "" {
			targets[it.t.Path]++
		}
		items = append(items, it)
	}
	for k := range items {
		if it := &items[k]; it.refuse == "" && targets[it.t.Path] > 1 {
			it.refuse = fmt.Sprintf("%d of the files to restore would go to %s: name one by its rescued path", targets[it.t.Path], quoteIfNeeded(it.t.Path))
		}
	}
	return items
}

// bySet splits items into their sets, oldest set first; within a set the
// companions come before the file they belong to (longer names first), so
// that a database never shows without the journal it needs.
func bySet(items []item) [][]item {
	slices.SortStableFunc(items, func(a, b item) int {
		return cmp.Or(cmp.Compare(a.set, b.set),
			cmp.Compare(len(filepath.Base(b.r.original())), len(filepath.Base(a.r.original()))),
			strings.Compare(a.r.path, b.r.path))
	})
	var out [][]item
	for i, it := range items {
		if i == 0 || it.set != items[i-1].set {
			out = append(out, nil)
		}
		out[len(out)-1] = append(out[len(out)-1], it)
	}
	slices.SortStableFunc(out, func(a, b []item) int { return a[0].r.at.Compare(b[0].r.at) })
	return out
}

// restoreSet checks every file of a set, then, if none is refused and
// this is not a dry run, restores them in order, stopping at the first
// failure: the rest of a set is worth little without it.
func restoreSet(ctx context.Context, eng *relink.Engine, pol *policy.Policy, cfg *config.Config, set []item, o restoreOptions, out *restoreReporter) {
	states := make([]relink.TargetState, len(set))
	why := make([]string, len(set))
	refused := -1
	for k := range set {
		it := &set[k]
		if it.refuse != "" {
			why[k] = it.refuse
		} else {
			st, err := eng.CheckTarget(it.t)
			if err != nil {
				why[k] = err.Error()
			}
			states[k] = st
		}
		if why[k] != "" && refused < 0 {
			refused = k
		}
	}
	for k := range set {
		it := &set[k]
		l := restoreLineOf(it, len(set))
		switch {
		case why[k] != "":
			l.Status, l.Error = "refused", why[k]
			out.print(l, &out.nbad)
		case refused >= 0:
			l.Status, l.Error = "refused", fmt.Sprintf("%s of its set is refused", quoteIfNeeded(set[refused].r.path))
			out.print(l, &out.nbad)
		case o.dryRun:
			l.Status, l.Replaced, l.Created = "would_restore", states[k].Exists, states[k].Missing
			bytes := it.r.file.Size
			l.Bytes = &bytes
			out.print(l, &out.nok)
		}
	}
	if refused >= 0 || o.dryRun {
		return
	}
	for k := range set {
		it := &set[k]
		l := restoreLineOf(it, len(set))
		res, err := restoreOne(ctx, eng, pol, cfg, it)
		if err != nil {
			l.Status, l.Error = "failed", err.Error()
			out.print(l, &out.nbad)
			for _, rest := range set[k+1:] {
				l := restoreLineOf(&rest, len(set))
				l.Status, l.Error = "failed", fmt.Sprintf("not restored: %s of its set failed", quoteIfNeeded(it.r.path))
				out.print(l, &out.nbad)
			}
			return
		}
		l.Status, l.Method, l.Replaced = "restored", string(res.Method), res.Replaced
		bytes := res.Bytes
		l.Bytes = &bytes
		out.print(l, &out.nok)
	}
}

// restoreOne opens the rescued file, checks that it is still the file
// that was listed, and restores it.
func restoreOne(ctx context.Context, eng *relink.Engine, pol *policy.Policy, cfg *config.Config, it *item) (relink.Restored, error) {
	r := it.r
	f, err := eng.OpenRescued(r.root, pol.Host().Via(), r.rel)
	if err != nil {
		return relink.Restored{}, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return relink.Restored{}, fmt.Errorf("fstat %s: %w", r.path, err)
	}
	if st.Dev != r.file.Dev || st.Ino != r.file.Ino {
		return relink.Restored{}, fmt.Errorf("%s was replaced since it was checked (now dev %d ino %d)", r.path, st.Dev, st.Ino)
	}
	space := mounts.FreeSpace
	if it.t.Via != "" {
		space = pol.Host().FreeSpace
	}
	if _, total, err := space(filepath.Dir(it.t.Path)); err == nil {
		it.t.MinFreeBytes = cfg.Rescue.MinFree.Floor(total)
	}
	return eng.Restore(ctx, f, it.t)
}

// restoreLine is one file's outcome in `restore`, the JSON object of
// --json. Names that are not UTF-8 have their exact bytes in the _base64
// fields, as elsewhere.
type restoreLine struct {
	Rescued       string `json:"rescued,omitempty"` // the rescued file
	RescuedBase64 string `json:"rescued_base64,omitempty"`
	Path          string `json:"path,omitempty"` // its original name
	PathBase64    string `json:"path_base64,omitempty"`
	To            string `json:"to,omitempty"` // where it is (or would be) restored
	ToBase64      string `json:"to_base64,omitempty"`
	// Status: restored, would_restore (--dry-run), refused, failed, or
	// unmatched (Arg named no rescued file).
	Status   string `json:"status"`
	Method   string `json:"method,omitempty"`
	Bytes    *int64 `json:"bytes,omitempty"`
	Replaced bool   `json:"replaced,omitempty"` // an existing file was (or would be) replaced
	Created  string `json:"created,omitempty"`  // --dry-run: the first directory that would be created
	Set      int    `json:"set,omitempty"`      // files restored with it as one set, itself included, when more than one
	Arg      string `json:"arg,omitempty"`
	Error    string `json:"error,omitempty"`
}

func restoreLineOf(it *item, setSize int) restoreLine {
	l := restoreLine{Rescued: it.r.path, Path: it.r.original(), To: it.t.Path}
	if setSize > 1 {
		l.Set = setSize
	}
	return l
}

// restoreReporter prints one line per file.
type restoreReporter struct {
	w         io.Writer
	json      bool
	nok, nbad int
}

func (o *restoreReporter) print(l restoreLine, count *int) {
	*count++
	if o.json {
		l.Rescued, l.RescuedBase64 = jsonName(l.Rescued)
		l.Path, l.PathBase64 = jsonName(l.Path)
		l.To, l.ToBase64 = jsonName(l.To)
		enc := json.NewEncoder(o.w)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(l)
		return
	}
	if l.Status == "unmatched" {
		fmt.Fprintf(o.w, "%s: %s\n", quoteIfNeeded(l.Arg), l.Error)
		return
	}
	head := quoteIfNeeded(l.Rescued)
	if l.To != "" {
		head += " -> " + quoteIfNeeded(l.To)
	}
	switch l.Status {
	case "restored":
		s := fmt.Sprintf("%s (%s, %d bytes", head, l.Method, *l.Bytes)
		if l.Replaced {
			s += "; replaced the file there"
		}
		fmt.Fprintln(o.w, s+")")
	case "would_restore":
		s := fmt.Sprintf("%s: would restore (%d bytes", head, *l.Bytes)
		if l.Replaced {
			s += "; would replace the file there"
		}
		if l.Created != "" {
			s += "; would create " + quoteIfNeeded(l.Created)
		}
		fmt.Fprintln(o.w, s+")")
	default:
		fmt.Fprintf(o.w, "%s: %s: %s\n", head, l.Status, l.Error)
	}
}
