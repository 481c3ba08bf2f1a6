package policy

import (
	"slices"

	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/mounts"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// Explicit decides for an explicit selection (`relinkd rescue` with
// globs, --pid or --fd): the caller named the files, so no rule, size
// bound, total or per-user cap applies; only min_free does, measured on
// the destination. The destination is to (a directory in relinkd's own
// view, on any filesystem) when given, else the location the policy's
// Locator chooses.
// It reserves nothing. Safe for concurrent use.
type Explicit struct {
	p  *Policy
	to string
}

// Explicit returns the decisions of an explicit selection rescued to to
// ("" for the configured location), with p's configuration.
func (p *Policy) Explicit(to string) *Explicit { return &Explicit{p: p, to: to} }

// DecideRule decides for c, matched to r when a rule matches it (the
// zero Rule otherwise: the rule only names the rescue). A Rescue decision
// tries the configured methods in order, each where it works; the
// decision is Skip (ReasonLocation, ReasonSpace) only when the location
// or its free space cannot be found, which for an explicit selection is
// a failure to report, not a limit. Follow is left to the caller
// (`relinkd rescue --follow`).
func (x *Explicit) DecideRule(c *scanner.Candidate, r config.Rule) Decision {
	skip := func(reason string, err error) Decision {
		return Decision{Action: Skip, Rule: r.Name, Reason: reason, Detail: err.Error()}
	}
	// --to is a path in the caller's own view; a located root is the
	// host's, reached through the policy's view, or the holder's own
	// (rescue.containers: inside).
	loc := mounts.Location{Root: x.to}
	if x.to == "" {
		var err error
		if loc, err = x.p.loc.Locate(c); err != nil {
			return skip(ReasonLocation, err)
		}
	}
	_, total, err := x.p.space.Room(loc)
	if err != nil {
		return skip(ReasonSpace, err)
	}
	rc := &x.p.cfg.Rescue
	return Decision{
		Action: Rescue, Rule: r.Name,
		Root: loc.Root, Via: loc.Via, Beneath: loc.Beneath, Rel: loc.Rel(c, x.p.now()),
		Kind: loc.Kind, SameMount: loc.SameMount, SameFS: loc.SameFS,
		Methods:      slices.Clone(rc.Methods),
		MinFreeBytes: rc.MinFree.Floor(total),
	}
}

// Release does nothing: an explicit decision reserves nothing.
func (x *Explicit) Release(*scanner.Candidate, Decision) {}
