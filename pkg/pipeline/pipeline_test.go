package pipeline

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/relinkd/relinkd/internal/layout"
	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/policy"
	"github.com/relinkd/relinkd/pkg/relink"
	"github.com/relinkd/relinkd/pkg/scanner"
)

func TestMain(m *testing.M) { testproc.Main(m) }

// eventMsgs are the messages of the README's event table that a pinned
// file can end in (internal/events).
var eventMsgs = map[string]bool{
	"file rescued": true, "rescue skipped": true, "rescue failed": true, "rescue cancelled": true,
	"follow finished": true, "follow stopped": true, "already rescued": true, "deleted file open": true,
}

// fixture is a pipeline over one real filesystem, logging to logs.
type fixture struct {
	t    *testing.T
	mnt  string
	logs *observer.ObservedLogs
	log  *zap.Logger
	eng  *relink.Engine
	pipe *Pipeline
}

func newFixture(t *testing.T, fstype string, sizeMiB int) *fixture {
	t.Helper()
	testfs.RequireRoot(t)
	f := &fixture{t: t, mnt: testfs.Mount(t, fstype, sizeMiB)}
	core, logs := observer.New(zapcore.DebugLevel)
	f.logs, f.log = logs, zap.New(core)
	f.eng = relink.New(relink.Options{FollowPoll: 20 * time.Millisecond, Sidecar: true}, f.log)
	f.pipe = New(f.eng, f.log, Options{})
	return f
}

// policy is a policy for a configuration with one rule, named w, that
// matches every file of the fixture's filesystem with action, and rescue
// options (YAML lines under rescue:, indented by two spaces) added.
func (f *fixture) policy(action string, rescue ...string) *policy.Policy {
	f.t.Helper()
	y := fmt.Sprintf("watch:\n  - name: w\n    paths: [%q]\n    action: %s\nrescue:\n  dirs: [%q]\n",
		f.mnt+"/src/**", action, f.root())
	quota := false
	for _, l := range rescue {
		y += "  " + l + "\n"
		quota = quota || strings.HasPrefix(l, "per_user:")
	}
	if !quota {
		y += "  per_user: {max_files: 0, max_bytes: 0}\n"
	}
	cfg, err := config.Parse("test.yaml", []byte(y))
	if err != nil {
		f.t.Fatalf("config: %v\n%s", err, y)
	}
	return policy.New(cfg, f.log)
}

func (f *fixture) root() string { return filepath.Join(f.mnt, "rescued") }

// hold starts a holder that writes data to src/name, keeps it open for
// writing and unlinks it; it returns the holder and the pinned file (as
// the daemon and the command pin it: a sweep's candidate, pinned).
func (f *fixture) hold(name, data string) (*testproc.Holder, *relink.Pin) {
	f.t.Helper()
	return f.holdWith(name, testproc.Write(0, data))
}

// holdMiB is hold with n MiB of data.
func (f *fixture) holdMiB(name string, n int) (*testproc.Holder, *relink.Pin) {
	f.t.Helper()
	return f.holdWith(name, testproc.Append(0, 1<<20, n, 0))
}

func (f *fixture) holdWith(name string, write testproc.Step) (*testproc.Holder, *relink.Pin) {
	f.t.Helper()
	path := filepath.Join(f.mnt, "src", name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		f.t.Fatal(err)
	}
	h := testproc.Start(f.t, testproc.Open(path, "w"), write, testproc.Unlink(path))
	return h, f.pin(h)
}

// pin sweeps h and pins its first descriptor.
func (f *fixture) pin(h *testproc.Holder) *relink.Pin {
	f.t.Helper()
	sc := scanner.New(scanner.Options{}, f.log)
	defer sc.Close()
	res, err := sc.SweepPIDs(f.t.Context(), []int{h.PID})
	if err != nil {
		f.t.Fatal(err)
	}
	for _, c := range res.Candidates {
		if c.FD != h.FDs[0] {
			continue
		}
		p, err := f.eng.Pin(c)
		if err != nil {
			f.t.Fatalf("pin: %v", err)
		}
		f.t.Cleanup(func() { p.Close() })
		return p
	}
	f.t.Fatalf("pid %d fd %d not among the sweep's candidates %+v", h.PID, h.FDs[0], res.Candidates)
	return nil
}

// run runs p's file through the pipeline with pol, the rule matched as
// the daemon and the command match it.
func (f *fixture) run(ctx context.Context, p *relink.Pin, pol Decider, match *policy.Policy) Outcome {
	f.t.Helper()
	c := p.Candidate()
	var rule config.Rule
	if match != nil {
		var ok bool
		if rule, ok = match.Match(&c); !ok {
			f.t.Fatalf("no rule matches %s", c.Path)
		}
	}
	return f.pipe.Run(ctx, Request{Pin: p, Rule: rule, Policy: pol})
}

// events returns the event-table events logged since the last call.
func (f *fixture) events() []observer.LoggedEntry {
	var out []observer.LoggedEntry
	for _, e := range f.logs.TakeAll() {
		if eventMsgs[e.Message] {
			out = append(out, e)
		}
	}
	return out
}

// one checks that exactly one event was logged since the last call, msg,
// with the fields want (and the file's path, pid and fd), and returns its
// fields.
func (f *fixture) one(p *relink.Pin, msg string, want map[string]any) map[string]any {
	f.t.Helper()
	evs := f.events()
	if len(evs) != 1 || evs[0].Message != msg {
		f.t.Fatalf("want one %q event, got %d: %v", msg, len(evs), evs)
	}
	got := evs[0].ContextMap()
	c := p.Candidate()
	if got["path"] != string(c.Path) || got["pid"] != int64(c.PID) || got["fd"] != int64(c.FD) {
		f.t.Errorf("%s names path %v pid %v fd %v, want %s %d %d", msg, got["path"], got["pid"], got["fd"], c.Path, c.PID, c.FD)
	}
	for k, v := range want {
		if got[k] != v {
			f.t.Errorf("%s: %s = %#v, want %#v (all: %v)", msg, k, got[k], v, got)
		}
	}
	return got
}

// afresh decides as Policy.Decide does, matching the rules itself, so
// that a file no rule matches is ignored.
type afresh struct{ *policy.Policy }

func (a afresh) DecideRule(c *scanner.Candidate, _ config.Rule) policy.Decision { return a.Decide(c) }

// TestOutcomes: each outcome of Run, reached with a real pinned file, a
// real policy and a real destination, returns its Kind and logs its one
// event.
func TestOutcomes(t *testing.T) {
	t.Run("ignored", func(t *testing.T) {
		f := newFixture(t, "tmpfs", 16)
		pol := f.policy("rescue")
		// A file outside every rule: only Decide, matching afresh, says so.
		path := filepath.Join(f.mnt, "elsewhere.log")
		h := testproc.Start(t, testproc.Open(path, "w"), testproc.Write(0, "x"), testproc.Unlink(path))
		p := f.pin(h)
		out := f.run(t.Context(), p, afresh{pol}, nil)
		if out.Kind != Ignored || out.Rescued != nil || out.Err != nil {
			t.Fatalf("got %v %+v, want ignored", out.Kind, out)
		}
		if evs := f.events(); len(evs) != 0 {
			t.Errorf("an ignored file logged %v", evs)
		}
	})
	t.Run("reported", func(t *testing.T) {
		f := newFixture(t, "tmpfs", 16)
		pol := f.policy("report")
		_, p := f.hold("app.log", "x")
		if out := f.run(t.Context(), p, pol, pol); out.Kind != Reported {
			t.Fatalf("got %v, want reported", out.Kind)
		}
		f.one(p, "deleted file open", map[string]any{"rule": "w", "size": int64(1)})
		if _, err := os.Stat(f.root()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a reported file made the rescue root: %v", err)
		}
	})
	t.Run("skipped for size", func(t *testing.T) {
		f := newFixture(t, "tmpfs", 16)
		pol := f.policy("rescue", "max_file_size: 1KiB")
		_, p := f.hold("big.log", strings.Repeat("x", 4096))
		out := f.run(t.Context(), p, pol, pol)
		if out.Kind != Skipped || out.Decision.Reason != policy.ReasonSize {
			t.Fatalf("got %v %q, want skipped for size", out.Kind, out.Decision.Reason)
		}
		f.one(p, "rescue skipped", map[string]any{"reason": "size", "rule": "w"})
	})
	t.Run("no space, by the policy", func(t *testing.T) {
		// 3 MiB on a 4 MiB tmpfs with copy the only method: no room.
		f := newFixture(t, "tmpfs", 4)
		pol := f.policy("rescue", "methods: [copy]", "min_free: 0%")
		_, p := f.holdMiB("big.log", 3)
		out := f.run(t.Context(), p, pol, pol)
		if out.Kind != NoSpace || out.Err != nil || out.Decision.Root != f.root() {
			t.Fatalf("got %v, err %v, root %q: want no space at %s, from the policy", out.Kind, out.Err, out.Decision.Root, f.root())
		}
		f.one(p, "rescue skipped", map[string]any{"reason": "space", "rule": "w"})
	})
	t.Run("no space, by the engine", func(t *testing.T) {
		// The policy leaves reflink (same filesystem) but not copy;
		// tmpfs has no reflink: the file did not fit. With per_user
		// max_files 1 the grant must come back, or the second try
		// would be a quota skip.
		f := newFixture(t, "tmpfs", 4)
		pol := f.policy("rescue", "min_free: 0%", "per_user: {max_files: 1, max_bytes: 0, window: 1h}")
		_, p := f.holdMiB("big.log", 3)
		for try := range 2 {
			out := f.run(t.Context(), p, pol, pol)
			if out.Kind != NoSpace || !errors.Is(out.Err, relink.ErrNoSpace) {
				t.Fatalf("try %d: got %v, %v: want no space found by the engine", try, out.Kind, out.Err)
			}
			f.one(p, "rescue skipped", map[string]any{"reason": "space", "rule": "w", "method": ""})
		}
	})
	t.Run("failed", func(t *testing.T) {
		// An explicit selection to a symlink: refused by the engine.
		f := newFixture(t, "tmpfs", 16)
		to := filepath.Join(f.mnt, "to")
		if err := os.Symlink(t.TempDir(), to); err != nil {
			t.Fatal(err)
		}
		pol := f.policy("rescue")
		_, p := f.hold("app.log", "data")
		out := f.run(t.Context(), p, pol.Explicit(to), nil)
		if out.Kind != Failed || !errors.Is(out.Err, relink.ErrUnsafePath) {
			t.Fatalf("got %v, %v: want failed, unsafe path", out.Kind, out.Err)
		}
		ev := f.one(p, "rescue failed", map[string]any{"method": ""})
		if e, _ := ev["error"].(string); !strings.Contains(e, "symlink") {
			t.Errorf("error %q does not say symlink", e)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		f := newFixture(t, "tmpfs", 16)
		pol := f.policy("rescue", "methods: [copy]")
		_, p := f.hold("app.log", "data")
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		out := f.run(ctx, p, pol, pol)
		if out.Kind != Cancelled || !errors.Is(out.Err, context.Canceled) {
			t.Fatalf("got %v, %v: want cancelled", out.Kind, out.Err)
		}
		f.one(p, "rescue cancelled", map[string]any{"method": "copy"})
	})
	t.Run("rescued", func(t *testing.T) {
		f := newFixture(t, "tmpfs", 16)
		pol := f.policy("rescue")
		_, p := f.hold("app.log", "data")
		out := f.run(t.Context(), p, pol, pol)
		if out.Kind != Rescued || out.Rescued == nil {
			t.Fatalf("got %v, %v: want rescued", out.Kind, out.Err)
		}
		res := out.Rescued.Result()
		if b, err := os.ReadFile(res.Path); err != nil || string(b) != "data" || !strings.HasPrefix(res.Path, f.root()+"/") {
			t.Errorf("rescued to %s: %q, %v", res.Path, b, err)
		}
		f.one(p, "file rescued", map[string]any{"rescued_to": res.Path, "method": "copy", "bytes": int64(4), "rule": "w"})
	})
	t.Run("explicit, rule null", func(t *testing.T) {
		f := newFixture(t, "tmpfs", 16)
		to := filepath.Join(f.mnt, "to")
		_, p := f.hold("app.log", "data")
		out := f.run(t.Context(), p, f.policy("rescue").Explicit(to), nil)
		if out.Kind != Rescued || !strings.HasPrefix(out.Rescued.Result().Path, to+"/") {
			t.Fatalf("got %v, %v: want rescued into %s", out.Kind, out.Err, to)
		}
		f.one(p, "file rescued", map[string]any{"rule": nil})
	})
}

// TestFollow: each end of a follow of a rescued file returns its end and
// logs its one event; the rescue's own event came before.
func TestFollow(t *testing.T) {
	for _, tt := range []struct {
		name string
		// act makes the follow end: on the holder, or by cancel.
		act   func(t *testing.T, h *testproc.Holder, rs *Rescue, cancel context.CancelFunc)
		end   FollowEnd
		msg   string
		want  map[string]any
		bytes int64 // the result's size at the end; -1: not checked
	}{
		{"finished", func(t *testing.T, h *testproc.Holder, _ *Rescue, _ context.CancelFunc) {
			h.Do(t, testproc.Write(0, " more"), testproc.Close(0))
		}, Finished, "follow finished", nil, 10},
		{"truncated", func(t *testing.T, h *testproc.Holder, _ *Rescue, _ context.CancelFunc) {
			h.Do(t, testproc.Truncate(0, 0))
		}, Truncated, "follow stopped", map[string]any{"reason": "truncation"}, 5},
		{"interrupted", func(_ *testing.T, _ *testproc.Holder, _ *Rescue, cancel context.CancelFunc) {
			cancel()
		}, Interrupted, "follow stopped", map[string]any{"reason": "shutdown"}, 5},
		{"failed", func(_ *testing.T, _ *testproc.Holder, rs *Rescue, _ context.CancelFunc) {
			rs.Close() // a closed rescue cannot be followed
		}, FollowFailed, "rescue failed", map[string]any{"op": "follow"}, -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, "tmpfs", 16)
			pol := f.policy("rescue", "follow: true")
			h, p := f.hold("app.log", "hello")
			out := f.run(t.Context(), p, pol, pol)
			if out.Kind != Rescued || !out.Decision.Follow {
				t.Fatalf("got %v (follow %v), %v: want rescued, to follow", out.Kind, out.Decision.Follow, out.Err)
			}
			f.one(p, "file rescued", nil)
			rs := out.Rescued
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			tt.act(t, h, rs, cancel)
			fo := rs.Follow(ctx)
			if fo.End != tt.end {
				t.Fatalf("follow ended %v (%v), want %v", fo.End, fo.Err, tt.end)
			}
			if (fo.Err != nil) != (tt.end == Interrupted || tt.end == FollowFailed) {
				t.Errorf("follow error %v for a follow %v", fo.Err, fo.End)
			}
			want := map[string]any{"rescued_to": rs.Result().Path}
			if tt.bytes >= 0 {
				want["bytes"] = tt.bytes
				if fo.Result.Bytes != tt.bytes {
					t.Errorf("result %d bytes, want %d", fo.Result.Bytes, tt.bytes)
				}
			}
			for k, v := range tt.want {
				want[k] = v
			}
			f.one(p, tt.msg, want)
		})
	}
}

// TestPublish: the rescue publishes inside Options.Publish (the daemon's
// retention never runs beside it), and a decision that rescues nothing
// does not call it.
func TestPublish(t *testing.T) {
	f := newFixture(t, "tmpfs", 16)
	var calls int
	var during []string // rescued files seen in the root as Publish returns
	f.pipe = New(f.eng, f.log, Options{Publish: func(run func()) {
		calls++
		run()
		during, _ = filepath.Glob(filepath.Join(f.root(), f.mnt, "src", "*.log.*"))
	}})
	pol := f.policy("rescue", "max_file_size: 1KiB")
	_, small := f.hold("small.log", "data")
	_, big := f.hold("big.log", strings.Repeat("x", 2048))
	if out := f.run(t.Context(), big, pol, pol); out.Kind != Skipped || calls != 0 {
		t.Fatalf("skip: %v with %d publish calls, want skipped and none", out.Kind, calls)
	}
	out := f.run(t.Context(), small, pol, pol)
	if out.Kind != Rescued || calls != 1 {
		t.Fatalf("rescue: %v with %d publish calls, want rescued and one", out.Kind, calls)
	}
	var names []string
	for _, p := range during {
		if !strings.HasSuffix(p, layout.SidecarSuffix) {
			names = append(names, p)
		}
	}
	if len(names) != 1 || names[0] != out.Rescued.Result().Path {
		t.Errorf("published within Publish: %v, want %s", names, out.Rescued.Result().Path)
	}
}
