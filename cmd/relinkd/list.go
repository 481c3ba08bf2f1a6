package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bmatcuk/doublestar/v4"
	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/layout"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/policy"
	"github.com/relinkd/relinkd/pkg/relink"
	"github.com/relinkd/relinkd/pkg/retention"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// Sidecar states of a listed file.
const (
	sidecarOK         = "ok"
	sidecarMissing    = "missing"    // a rescued file without a sidecar
	sidecarUnreadable = "unreadable" // a sidecar that cannot be read
	sidecarForged     = "forged"     // not one relinkd wrote, or its claims do not match the file
	sidecarOrphan     = "orphan"     // a sidecar whose rescued file is gone
	// A rescued copy that was restored by link (another name shares its
	// inode) and has changed since: the sidecar is the engine's, but the
	// file is no longer what was rescued.
	sidecarChanged = "changed"
)

// rescue is one rescued file (or lone sidecar) found in a rescue root,
// with what its sidecar says once that has been checked.
type rescue struct {
	root, rel string
	path      string // the rescued file's host path: root/rel
	file      retention.FileFacts
	hasFile   bool
	name      layout.Name // what the rescued name says
	at        time.Time   // when it was rescued (from the name)
	status    string      // sidecarOK …
	problem   string      // why status is not ok
	sc        relink.Sidecar
	follow    string // relink.Follow*, for a trusted sidecar
}

// trusted reports whether the sidecar was checked and describes the file:
// what can be restored.
func (r *rescue) trusted() bool { return r.status == sidecarOK }

// believed reports whether the sidecar is the engine's, so that what it
// says of the rescue may be shown: trusted, or a file changed since.
func (r *rescue) believed() bool { return r.status == sidecarOK || r.status == sidecarChanged }

// original is the holder's name for the file, when the sidecar is believed.
func (r *rescue) original() string {
	if !r.believed() {
		return ""
	}
	return string(r.sc.OriginalPath())
}

// findRescues reads every known rescue root and checks each sidecar
// against the file beside it, oldest rescue first. The roots are the
// configured rescue.dirs, the fs_dir root of every host mount and
// rescue.container_dir (policy.Roots), read through the policy's view of
// the host. A root that cannot be read is
// reported in errs; the others are still listed.
func findRescues(pol *policy.Policy) (out []rescue, errs []error) {
	for _, root := range pol.Roots() {
		err := retention.WalkRescued(pol.Host().Via(), root, func(f retention.RescuedFile) { out = append(out, checkRescue(f)) })
		if err != nil {
			errs = append(errs, err)
		}
	}
	slices.SortFunc(out, func(a, b rescue) int { return cmp.Or(a.at.Compare(b.at), strings.Compare(a.path, b.path)) })
	return out, errs
}

// checkRescue decides how far f's sidecar can be believed.
func checkRescue(f retention.RescuedFile) rescue {
	r := rescue{root: f.Root, rel: f.Rel, path: joinRoot(f.Root, f.Rel), file: f.File, hasFile: f.HasFile}
	r.name, _ = layout.ParseRescued(f.Rel[strings.LastIndexByte(f.Rel, '/')+1:])
	r.at = r.name.Time
	bad := func(status, format string, args ...any) rescue {
		r.status, r.problem = status, fmt.Sprintf(format, args...)
		return r
	}
	switch {
	case !f.HasFile:
		return bad(sidecarOrphan, "a sidecar without its rescued file")
	case !f.HasSidecar:
		return bad(sidecarMissing, "no sidecar beside the rescued file")
	case f.SidecarErr != nil:
		return bad(sidecarUnreadable, "sidecar: %v", f.SidecarErr)
	case f.Untrusted != "":
		return bad(sidecarForged, "not necessarily written by relinkd: %s", f.Untrusted)
	}
	if why := f.SidecarFileProblem(); why != "" {
		return bad(sidecarForged, "not written by relinkd: %s", why)
	}
	sc, err := relink.ReadSidecar(f.Sidecar)
	if err != nil {
		return bad(sidecarForged, "%v", err)
	}
	found := relink.Found{Path: r.path, Dev: f.File.Dev, Ino: f.File.Ino, Nlink: f.File.Nlink, Size: f.File.Size, BirthTime: f.File.BirthTime,
		Mtime: f.File.Mtime, SidecarMtime: f.SidecarFile.Mtime}
	if err := layout.CheckRescuedName(f.Rel, holderOf(&sc)); err != nil {
		return bad(sidecarForged, "%v: %v", relink.ErrSidecar, err)
	}
	if sc.Time.Before(r.at) {
		return bad(sidecarForged, "%v: written at %s, before the rescue its name dates %s", relink.ErrSidecar,
			sc.Time.UTC().Format(time.RFC3339), r.at.Format(time.RFC3339))
	}
	if err := sc.Verify(found); err != nil {
		// A copy restored by link is the restored file too: it changes
		// with it. Only its size may then disagree.
		same := sc
		same.Bytes, same.Followed, same.Following = f.File.Size, false, false
		if f.File.Nlink > 1 && sc.Method != relink.MethodLink && same.Verify(found) == nil {
			r.sc = sc
			return bad(sidecarChanged, "the file has %d bytes, %d when it was rescued, and %d links: restored by link, and changed since",
				f.File.Size, sc.Bytes, f.File.Nlink)
		}
		return bad(sidecarForged, "%v", err)
	}
	r.sc, r.status = sc, sidecarOK
	r.follow = sc.FollowState(found)
	return r
}

// holderOf is the candidate a sidecar describes, as far as naming goes.
func holderOf(s *relink.Sidecar) *scanner.Candidate {
	return &scanner.Candidate{Path: s.OriginalPath(), PID: s.PID, FD: s.FD, MntNS: s.MntNS, ContainerID: s.ContainerID}
}

// joinRoot is root/rel, cleaned as the engine cleans the root it writes
// rescued_to from.
func joinRoot(root, rel string) string { return filepath.Join(root, rel) }

// listOptions are the flags and globs of `relinkd list`.
type listOptions struct {
	configPath string
	asJSON     bool
	since      time.Duration
	globs      []string
	mode       hostMode
}

const listSynopsis = "[FLAGS] [--] [GLOB…]"

func parseListArgs(e env, args []string) (listOptions, error) {
	var o listOptions
	fl := newFlagSet("list")
	fl.StringVar(&o.configPath, "config", "", "configuration `file` (default /etc/relinkd/relinkd.yaml, else embedded)")
	fl.BoolVar(&o.asJSON, "json", false, "print one JSON object per line")
	since := fl.String("since", "", "only files rescued within `DURATION` (30m, 12h, 7d …)")
	var hf hostFlags
	hf.add(fl)
	globs, err := parseArgs(e.stdout, fl, listSynopsis, args)
	if err != nil {
		return o, err
	}
	if o.mode, err = hf.resolve(fl); err != nil {
		return o, err
	}
	for _, g := range globs {
		if !doublestar.ValidatePattern(g) {
			return o, fmt.Errorf("%w: bad glob %q", errUsage, g)
		}
	}
	o.globs = globs
	if *since != "" {
		d, err := config.ParseDuration(*since)
		if err != nil || d <= 0 {
			return o, fmt.Errorf("%w: --since %q: not a duration", errUsage, *since)
		}
		o.since = time.Duration(d)
	}
	return o, nil
}

// cmdList lists the rescued files of every known rescue root, oldest
// first, from their sidecars; a sidecar that is missing, unreadable or
// forged is listed with why, and nothing it claims is shown. It fails
// only when a root could not be read.
func cmdList(_ context.Context, e env, args []string) error {
	o, err := parseListArgs(e, args)
	if err != nil {
		return err
	}
	cfg, _, err := config.Resolve(o.configPath)
	if err != nil {
		return err
	}
	pol := policy.New(cfg, zap.NewNop(), o.mode.policyOptions()...)
	all, errs := findRescues(pol)
	var rs []rescue
	cut := time.Now().Add(-o.since)
	for _, r := range all {
		if o.since > 0 && r.at.Before(cut) {
			continue
		}
		if len(o.globs) > 0 && !(r.believed() && matchAny(o.globs, r.original())) && !matchAny(o.globs, r.path) {
			continue
		}
		rs = append(rs, r)
	}
	if o.asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetEscapeHTML(false)
		for i := range rs {
			if err := enc.Encode(listLineOf(&rs[i])); err != nil {
				return err
			}
		}
	} else if err := printRescues(e.stdout, rs); err != nil {
		return err
	}
	for _, err := range errs {
		fmt.Fprintf(e.stderr, "relinkd: %v\n", err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %d rescue root(s) not read", errReported, len(errs))
	}
	return nil
}

// listLine is one rescued file in `list --json`. Claims of a sidecar that
// is not ok are left out.
type listLine struct {
	Path            string  `json:"path,omitempty"`
	PathBase64      string  `json:"path_base64,omitempty"`
	MntNS           uint64  `json:"mntns,omitempty"`
	ContainerID     string  `json:"container_id,omitempty"`
	Comm            string  `json:"comm,omitempty"`
	PID             int     `json:"pid,omitempty"`
	FD              *int    `json:"fd,omitempty"`
	UID             *uint32 `json:"uid,omitempty"`
	Rule            *string `json:"rule,omitempty"`
	Method          string  `json:"method,omitempty"`
	Bytes           *int64  `json:"bytes,omitempty"`
	Follow          string  `json:"follow,omitempty"`
	RescuedAt       string  `json:"rescued_at"`
	RescuedTo       string  `json:"rescued_to"`
	RescuedToBase64 string  `json:"rescued_to_base64,omitempty"`
	Root            string  `json:"root"`
	Size            *int64  `json:"size,omitempty"`      // the rescued file's size now
	Allocated       *int64  `json:"allocated,omitempty"` // its st_blocks×512
	Links           uint32  `json:"links,omitempty"`     // its st_nlink: more than 1 once restored by link
	Sidecar         string  `json:"sidecar"`
	Problem         string  `json:"problem,omitempty"`
}

func listLineOf(r *rescue) listLine {
	l := listLine{RescuedAt: r.at.UTC().Format(time.RFC3339), Root: r.root, Sidecar: r.status, Problem: r.problem}
	l.RescuedTo, l.RescuedToBase64 = jsonName(r.path)
	if r.hasFile {
		size, alloc := r.file.Size, r.file.Blocks*512
		l.Size, l.Allocated, l.Links = &size, &alloc, r.file.Nlink
	}
	if !r.believed() {
		return l
	}
	s := &r.sc
	l.Path, l.PathBase64 = jsonName(r.original())
	fd, uid, bytes := s.FD, s.UID, s.Bytes
	l.MntNS, l.ContainerID, l.Comm, l.PID, l.FD, l.UID = s.MntNS, s.ContainerID, s.Comm, s.PID, &fd, &uid
	l.Method, l.Bytes, l.Follow = string(s.Method), &bytes, r.follow
	if s.Rule != nil {
		rule := *s.Rule
		l.Rule = &rule
	}
	return l
}

// printRescues prints the table, then what is wrong with the sidecars
// that are not ok.
func printRescues(w io.Writer, rs []rescue) error {
	if len(rs) == 0 {
		fmt.Fprintln(w, "no rescued files")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESCUED AT\tPATH\tHOLDER\tRULE\tMETHOD\tBYTES\tFOLLOW\tRESCUED TO")
	var bad []*rescue
	for i := range rs {
		r := &rs[i]
		at := r.at.UTC().Format("2006-01-02 15:04:05Z")
		if !r.trusted() {
			bad = append(bad, r)
		}
		if !r.believed() {
			fmt.Fprintf(tw, "%s\t(sidecar %s)\t-\t-\t-\t-\t-\t%s\n", at, r.status, quoteIfNeeded(r.path))
			continue
		}
		s := &r.sc
		path := quoteIfNeeded(r.original())
		switch {
		case s.ContainerID != "":
			path = "[" + shortID(s.ContainerID) + "] " + path // in the container's view
		case s.MntNS != 0:
			path = "[mntns-" + strconv.FormatUint(s.MntNS, 10) + "] " + path
		}
		rule := "-"
		if s.Rule != nil {
			rule = displayPath([]byte(*s.Rule))
		}
		follow := r.follow
		switch {
		case r.status == sidecarChanged:
			follow = "(changed)"
		case follow == "":
			follow = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s[%d] uid %d\t%s\t%s\t%d\t%s\t%s\n", at, path, displayPath([]byte(s.Comm)), s.PID, s.UID,
			rule, s.Method, s.Bytes, follow, quoteIfNeeded(r.path))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(bad) > 0 {
		fmt.Fprintf(w, "\n%d of %d rescued file(s) not as their sidecar says:\n", len(bad), len(rs))
		for _, r := range bad {
			fmt.Fprintf(w, "%s: sidecar %s: %s\n", quoteIfNeeded(r.path), r.status, r.problem)
		}
	}
	return nil
}

// shortID shortens a container id the way docker ps does.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
