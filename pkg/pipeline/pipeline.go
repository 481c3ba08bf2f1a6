// Package pipeline is relinkd's one rescue pipeline, used by the daemon's
// workers and by `relinkd rescue`: for a pinned deleted file and the rule
// that matched it, the policy decides, the engine rescues, the rescued
// file is followed if the caller wants, and what the policy reserved is
// given back when the rescue does not happen.
//
// The engine (pkg/relink) returns values; the pipeline writes the rescue
// events of the README's event table (through internal/events), each once,
// and returns what became of the file as an Outcome. Callers map outcomes
// onto what is theirs: the daemon onto its ledger, budget and metrics, the
// command onto its report lines.
//
//	pin (caller) ─> Run: decide ─> rescue ─> Outcome ─> Rescue.Follow ─> FollowOutcome
//	                     (policy)   (engine)  + event    (engine)         + event
package pipeline

import (
	"context"
	"errors"
	"strconv"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/events"
	"github.com/relinkd/relinkd/internal/logging"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/policy"
	"github.com/relinkd/relinkd/pkg/relink"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// Decider is the policy as the pipeline asks it: a *policy.Policy, or a
// *policy.Explicit for an explicit selection.
type Decider interface {
	// DecideRule decides for c, already matched to r.
	DecideRule(c *scanner.Candidate, r config.Rule) policy.Decision
	// Release gives back what a Rescue decision reserved for c.
	Release(c *scanner.Candidate, d policy.Decision)
}

// Options configure a Pipeline.
type Options struct {
	// Publish, when set, runs each call that publishes a rescued file
	// (the engine's Rescue and Adopt): the daemon's retention runs never
	// beside one. nil runs them as they are.
	Publish func(func())
}

// Pipeline rescues pinned files with one engine. It holds no per-file
// state and is safe for concurrent use.
type Pipeline struct {
	eng     *relink.Engine
	ev      events.Emitter
	log     *zap.Logger
	publish func(func())
}

// New returns a Pipeline that rescues with eng and logs the events to log.
func New(eng *relink.Engine, log *zap.Logger, opt Options) *Pipeline {
	if log == nil {
		log = zap.NewNop()
	}
	p := &Pipeline{eng: eng, ev: events.New(log), log: log, publish: opt.Publish}
	if p.publish == nil {
		p.publish = func(f func()) { f() }
	}
	return p
}

// Kind is what became of a file.
type Kind int

// Kinds of Outcome.
const (
	// Ignored: the policy ignores the file; nothing is logged.
	Ignored Kind = iota
	// Reported: a report rule matched; "deleted file open" is logged.
	Reported
	// Skipped: the policy said no (Decision.Reason, Decision.Detail);
	// "rescue skipped" is logged.
	Skipped
	// NoSpace: the file does not fit at Decision.Root: the policy said so
	// (reason space; Err nil) or the engine found it (Err wraps
	// relink.ErrNoSpace). "rescue skipped", reason space, is logged.
	NoSpace
	// Cancelled: the caller's context ended the rescue; nothing was
	// published, and "rescue cancelled" is logged.
	Cancelled
	// Failed: the rescue failed (Err); "rescue failed" is logged.
	Failed
	// Rescued: the file has a name again (Outcome.Rescued); "file
	// rescued" is logged.
	Rescued
)

func (k Kind) String() string {
	switch k {
	case Ignored:
		return "ignored"
	case Reported:
		return "reported"
	case Skipped:
		return "skipped"
	case NoSpace:
		return "no space"
	case Cancelled:
		return "cancelled"
	case Failed:
		return "failed"
	case Rescued:
		return "rescued"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Outcome is what Run made of one pinned file.
type Outcome struct {
	Kind Kind
	// Decision is the policy's: the rule, the reason and detail of a
	// skip, the destination (Root, MinFreeBytes) and Follow.
	Decision policy.Decision
	// Err is the engine's *relink.RescueError for Failed, Cancelled and
	// a NoSpace the engine found; nil otherwise.
	Err error
	// Rescued is the rescued file, for Kind Rescued only: it owns the
	// destination and the pin; Follow it or Close it.
	Rescued *Rescue
}

// Request is one file for Run.
type Request struct {
	// Pin is the pinned file (its Candidate is what the policy decides
	// on). It stays the caller's: Run never closes it, and closing it
	// also releases a Rescue made of it.
	Pin *relink.Pin
	// Rule is the rule that matched the pinned file (the zero Rule when
	// none did, as for an explicit selection).
	Rule config.Rule
	// Policy decides, and takes back what it reserved when the rescue
	// does not happen.
	Policy Decider
	// Progress, when set, is called after each chunk the rescue and its
	// follow write (relink.Destination.Progress).
	Progress func()
}

// Run decides for the pinned file, rescues it when the policy says so,
// logs the one event that says what became of it and returns that. When
// the rescue does not happen, Run gives back to the policy what its
// decision reserved.
func (p *Pipeline) Run(ctx context.Context, rq Request) Outcome {
	c := rq.Pin.Candidate()
	dec := rq.Policy.DecideRule(&c, rq.Rule)
	out := Outcome{Decision: dec}
	switch dec.Action {
	case policy.Ignore:
		out.Kind = Ignored
		return out
	case policy.Report:
		p.ev.Open(&c, dec.Rule)
		out.Kind = Reported
		return out
	case policy.Skip:
		p.ev.Skipped(&c, dec.Reason, dec.Rule, dec.Detail)
		out.Kind = Skipped
		if dec.Reason == policy.ReasonSpace && dec.Root != "" {
			out.Kind = NoSpace
		}
		return out
	}
	methods := make([]relink.Method, 0, len(dec.Methods))
	for _, m := range dec.Methods {
		methods = append(methods, relink.Method(m))
	}
	var rs *relink.Rescued
	var err error
	p.publish(func() {
		rs, err = p.eng.Rescue(ctx, rq.Pin, relink.Destination{
			Root: dec.Root, Via: dec.Via, Rel: dec.Rel, MinFreeBytes: dec.MinFreeBytes, Rule: dec.Rule,
			NoRoomToCopy: dec.NoRoomToCopy, Beneath: dec.Beneath, Methods: methods, Progress: rq.Progress,
		})
	})
	if err != nil {
		rq.Policy.Release(&c, dec)
		out.Err = err
		re := rescueError(err, &c)
		switch {
		case errors.Is(err, context.Canceled):
			// Shutdown or an interrupted command: abandoned by the
			// caller, nothing published, not a failure to alert on.
			p.ev.Cancelled(&c, string(re.Method))
			out.Kind = Cancelled
		case errors.Is(err, relink.ErrNoSpace):
			// Not a failure to alert on either: the destination is
			// full, or the copy would go below min_free. Nothing was left.
			p.ev.Skipped(&c, policy.ReasonSpace, dec.Rule, re.Err.Error(), zap.String("method", string(re.Method)))
			out.Kind = NoSpace
		default:
			p.ev.Failed(&c, re.Err, zap.String("method", string(re.Method)))
			out.Kind = Failed
		}
		return out
	}
	res := rs.Result()
	p.ev.Rescued(&c, res.Path, string(res.Method), res.Bytes, dec.Rule, res.Duration)
	out.Kind = Rescued
	out.Rescued = &Rescue{p: p, rs: rs, c: c}
	return out
}

// PinFailed logs "rescue failed" for c, the sweep's candidate, whose pin
// failed with err for a reason other than a vanished holder, an identity
// change or a file that is not regular (which are not failures).
func (p *Pipeline) PinFailed(c *scanner.Candidate, err error) { p.ev.Failed(c, err) }

// rescueError is err as the *relink.RescueError the engine returns.
func rescueError(err error, c *scanner.Candidate) *relink.RescueError {
	var re *relink.RescueError
	if !errors.As(err, &re) {
		re = &relink.RescueError{Op: "rescue", PID: c.PID, FD: c.FD, Path: string(c.Path), Err: err}
	}
	return re
}

// Adopt makes the pinned file the earlier rescue a that its sidecar
// describes (relink.Engine.Adopt) and logs "already rescued", with the
// follow to be resumed. It logs nothing when the file cannot be adopted:
// the caller rescues it anew (Run) or gives up.
func (p *Pipeline) Adopt(pin *relink.Pin, a relink.Adoption) (*Rescue, error) {
	var rs *relink.Rescued
	var err error
	p.publish(func() { rs, err = p.eng.Adopt(pin, a) })
	if err != nil {
		return nil, err
	}
	c := pin.Candidate()
	res := rs.Result()
	p.ev.AlreadyRescued(&c, res.Path, string(res.Method), true)
	return &Rescue{p: p, rs: rs, c: c}, nil
}

// Rescue is a rescued file: what Run or Adopt made of a pin. It owns the
// rescued file and the pin (relink.Rescued); only the pipeline makes one,
// so a follow always follows a rescued file.
type Rescue struct {
	p  *Pipeline
	rs *relink.Rescued
	c  scanner.Candidate // the pinned file, for the events
}

// Result is the rescue's result, as Follow updates it.
func (r *Rescue) Result() relink.Result { return r.rs.Result() }

// Close releases the rescued file's descriptors and the pin. It is safe to
// call more than once.
func (r *Rescue) Close() error { return r.rs.Close() }

// FollowEnd is how a follow ended.
type FollowEnd int

// Ends of a follow.
const (
	// Finished: the last writer closed the file; "follow finished" is
	// logged with its final size.
	Finished FollowEnd = iota
	// Truncated: the source shrank (copytruncate); what was copied is
	// kept and "follow stopped", reason truncation, is logged.
	Truncated
	// Interrupted: the context ended first (shutdown, SIGINT); what was
	// appended is durable, and "follow stopped", reason shutdown, is
	// logged. The rescue stands.
	Interrupted
	// FollowFailed: the follow failed (FollowOutcome.Err); "rescue
	// failed" with op follow is logged. The rescue stands, with what was
	// appended before.
	FollowFailed
)

func (e FollowEnd) String() string {
	switch e {
	case Finished:
		return "finished"
	case Truncated:
		return "truncated"
	case Interrupted:
		return "interrupted"
	case FollowFailed:
		return "failed"
	}
	return "follow end(" + strconv.Itoa(int(e)) + ")"
}

// FollowOutcome is how a follow ended, and the rescue's result then.
type FollowOutcome struct {
	End    FollowEnd
	Result relink.Result
	Err    error // the engine's *relink.RescueError (op follow), for Interrupted and FollowFailed
}

// Follow appends what writers add to the rescued file until the last one
// closes it (relink.Rescued.Follow), logs how the follow ended and returns
// that. It can run as long as the writer: run it in its own goroutine.
func (r *Rescue) Follow(ctx context.Context) FollowOutcome {
	c := &r.c
	res, err := r.rs.Follow(ctx)
	out := FollowOutcome{Result: res, Err: err}
	switch {
	case err == nil && res.Stopped == "":
		r.p.ev.FollowFinished(c, res.Path, res.Bytes)
		out.End = Finished
	case err == nil:
		r.p.ev.FollowStopped(c, res.Path, res.Bytes, res.Stopped)
		out.End = Truncated
	case res.Stopped != "":
		r.p.ev.FollowStopped(c, res.Path, res.Bytes, res.Stopped)
		out.End = Interrupted
	default:
		re := rescueError(err, c)
		r.p.ev.Failed(c, re.Err, logging.Path("rescued_to", []byte(res.Path)), zap.String("op", "follow"))
		out.End = FollowFailed
	}
	return out
}
