package daemon

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/policy"
)

func TestMain(m *testing.M) { testproc.Main(m) }

// harness runs a daemon in-process on a fresh filesystem.
type harness struct {
	t       *testing.T
	d       *Daemon
	logs    *observer.ObservedLogs
	mnt     string
	watched string
	rescued string
	cancel  context.CancelFunc
	done    chan error
	notes   chan string
	wake    *waker // every log line and pins_held or watch gauge change
}

func testConfig(t *testing.T, watched, rescued, extraRules, rescueExtra string) *config.Config {
	t.Helper()
	y := fmt.Sprintf(`scan:
  interval: 1h
  events: true
watch:
  - name: w
    paths: [%q]
    action: rescue
%s
rescue:
  dirs: [%q]
  min_free: 1%%
  max_total_size: 0
  per_user:
    max_files: 0
    max_bytes: 0
%s`, watched+"/**", extraRules, rescued, rescueExtra)
	cfg, err := config.Parse("test.yaml", []byte(y))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, y)
	}
	return cfg
}

// hooks run at points of start; either may be nil.
type hooks struct {
	beforeRun func(*Daemon)  // after New, before Run (to swap a metric)
	running   func(*harness) // once Run was started, before READY=1
}

func start(t *testing.T, fstype string, mk func(watched, rescued string) *config.Config, tweak func(*Options)) *harness {
	t.Helper()
	return startHooked(t, fstype, mk, tweak, hooks{})
}

func startHooked(t *testing.T, fstype string, mk func(watched, rescued string) *config.Config, tweak func(*Options), hk hooks) *harness {
	t.Helper()
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, fstype, 64)
	h := &harness{t: t, mnt: mnt, watched: filepath.Join(mnt, "w"), rescued: filepath.Join(mnt, "rescued"),
		done: make(chan error, 1), notes: make(chan string, 64)}
	if err := os.MkdirAll(h.watched, 0o755); err != nil {
		t.Fatal(err)
	}
	opt := Options{
		Config: mk(h.watched, h.rescued),
		Notify: func(s string) { h.notes <- s },
	}
	if tweak != nil {
		tweak(&opt)
	}
	h.run(opt, hk)
	return h
}

// run starts a daemon with opt and waits for READY=1.
func (h *harness) run(opt Options, hk hooks) {
	t := h.t
	t.Helper()
	h.wake = newWaker()
	core, logs := observer.New(zapcore.DebugLevel)
	h.logs = logs
	d, err := New(opt, zap.New(wakeCore{core, h.wake}))
	if err != nil {
		t.Fatal(err)
	}
	h.d = d
	if hk.beforeRun != nil {
		hk.beforeRun(d)
	}
	d.m.PinsHeld = wakeGauge{d.m.PinsHeld, h.wake}
	d.m.Watches = wakeGauge{d.m.Watches, h.wake}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- d.Run(ctx) }()
	t.Cleanup(h.stop)
	t.Cleanup(h.dump)
	if hk.running != nil {
		hk.running(h)
	}
	h.note("READY=1")
}

func (h *harness) note(want string) {
	h.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s := <-h.notes:
			if s == want {
				return
			}
		case <-deadline:
			h.t.Fatalf("no %s notification", want)
		}
	}
}

// dump logs the daemon's events when the test failed.
func (h *harness) dump() {
	if !h.t.Failed() {
		return
	}
	for _, e := range h.logs.All() {
		h.t.Logf("%s %s %v", e.Level, e.Message, e.ContextMap())
	}
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		h.t.Error("Run did not return within 10s")
	}
}

// wait waits until n logged entries match.
func (h *harness) wait(what string, n int, match func(observer.LoggedEntry) bool) []observer.LoggedEntry {
	h.t.Helper()
	var got []observer.LoggedEntry
	h.wake.until(h.t, fmt.Sprintf("%d × %s", n, what), func() bool {
		got = h.logs.Filter(match).All()
		return len(got) >= n
	})
	return got
}

// waitFor waits until cond holds, checking it at every log line and gauge
// change.
func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	h.wake.until(h.t, what, cond)
}

func msgPath(msg, path string) func(observer.LoggedEntry) bool {
	return func(e observer.LoggedEntry) bool {
		if e.Message != msg {
			return false
		}
		return e.ContextMap()["path"] == path
	}
}

// field returns a field of e.
func field(e observer.LoggedEntry, key string) any {
	return e.ContextMap()[key]
}

// fullSweeps waits for n more full sweeps than now, each done to its end:
// a full sweep logs "sweep" (kind full) once it has considered its
// candidates and forgotten what it did not see. (The sweep counter is
// bumped before that, so it is no sign that the sweep is over.)
func (h *harness) fullSweeps(n int) {
	h.t.Helper()
	done := func(e observer.LoggedEntry) bool { return e.Message == "sweep" && field(e, "kind") == "full" }
	before := h.logs.Filter(done).Len()
	h.wait(fmt.Sprintf("%d more full sweeps", n), before+n, done)
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestOneInodeManyHolders: three processes and two descriptors on one
// deleted inode give one rescue, and sweeps after it repeat nothing.
func TestOneInodeManyHolders(t *testing.T) {
	h := start(t, "tmpfs", func(w, r string) *config.Config { return testConfig(t, w, r, "", "") },
		func(o *Options) { o.Config.Scan.Interval = config.Duration(100 * time.Millisecond) })
	p := filepath.Join(h.watched, "shared.log")
	write(t, p, "shared data\n")
	a := testproc.Start(t, testproc.Open(p, "r"), testproc.Open(p, "r"))
	b := testproc.Start(t, testproc.Open(p, "r"))
	testproc.Start(t, testproc.Open(p, "r"), testproc.Unlink(p))
	h.wait("file rescued", 1, msgPath("file rescued", p))
	h.fullSweeps(3)
	if n := len(h.logs.FilterMessage("file rescued").All()); n != 1 {
		t.Errorf("%d file rescued events, want 1", n)
	}
	if got := value(h.d.m.Rescues.WithLabelValues("copy")); got != 1 {
		t.Errorf("rescues_total{method=copy} = %v, want 1", got)
	}
	if got := value(h.d.m.PinsHeld); got != 0 {
		t.Errorf("pins_held = %v after the rescue, want 0", got)
	}
	a.Exit(t)
	b.Exit(t)
}

// TestReportAndSkip: a report rule logs "deleted file open" once; a file
// above max_file_size is skipped with reason size, once.
func TestReportAndSkip(t *testing.T) {
	h := start(t, "tmpfs", func(w, r string) *config.Config {
		return testConfig(t, w, r, fmt.Sprintf("  - name: seen\n    paths: [%q]\n    action: report\n", filepath.Dir(w)+"/r/**"),
			"  max_file_size: 10B\n")
	}, func(o *Options) { o.Config.Scan.Interval = config.Duration(100 * time.Millisecond) })
	rdir := filepath.Join(h.mnt, "r")
	if err := os.Mkdir(rdir, 0o755); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(h.watched, "big.log")
	write(t, big, "more than ten bytes\n")
	rep := filepath.Join(rdir, "r.log")
	write(t, rep, "x")
	testproc.Start(t, testproc.Open(big, "r"), testproc.Open(rep, "r"), testproc.Unlink(big), testproc.Unlink(rep))
	sk := h.wait("rescue skipped", 1, msgPath("rescue skipped", big))
	if r := field(sk[0], "reason"); r != policy.ReasonSize {
		t.Errorf("reason = %v, want %s", r, policy.ReasonSize)
	}
	op := h.wait("deleted file open", 1, msgPath("deleted file open", rep))
	if r := field(op[0], "rule"); r != "seen" {
		t.Errorf("rule = %v, want seen", r)
	}
	// A name that is not UTF-8: path carries U+FFFD, path_base64 the bytes.
	bad := filepath.Join(rdir, "bad\xff\xfe.log")
	write(t, bad, "y")
	testproc.Start(t, testproc.Open(bad, "r"), testproc.Unlink(bad))
	be := h.wait("deleted file open for a non-UTF-8 name", 1, func(e observer.LoggedEntry) bool {
		return e.Message == "deleted file open" && field(e, "path_base64") != nil
	})
	if got := field(be[0], "path_base64"); got != base64.StdEncoding.EncodeToString([]byte(bad)) {
		t.Errorf("path_base64 = %v, want the bytes of %q", got, bad)
	}
	// As the JSON encoder writes it.
	buf, err := zapcore.NewJSONEncoder(zapcore.EncoderConfig{MessageKey: "msg"}).EncodeEntry(be[0].Entry, be[0].Context)
	if err != nil {
		t.Fatal(err)
	}
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	if got, _ := line["path"].(string); !utf8.ValidString(got) || !strings.Contains(got, "\ufffd") {
		t.Errorf("JSON path = %q, want valid UTF-8 with U+FFFD", got)
	}

	h.fullSweeps(3)
	for m, want := range map[string]int{"rescue skipped": 1, "deleted file open": 2} {
		if n := len(h.logs.FilterMessage(m).All()); n != want {
			t.Errorf("%d %q events, want %d", n, m, want)
		}
	}
	if got := value(h.d.m.Skips.WithLabelValues(policy.ReasonSize)); got != 1 {
		t.Errorf("skips{reason=size} = %v, want 1", got)
	}
	if n := len(h.logs.FilterMessage("file rescued").All()); n != 0 {
		t.Errorf("%d files rescued, want 0", n)
	}
}

// maxGauge is a gauge that remembers the highest value it was set to.
// The daemon sets pins_held under its lock at every pin and release, so
// this sees every value the pin count takes, not samples of it.
type maxGauge struct {
	prometheus.Gauge
	mu  sync.Mutex
	max float64
}

func (g *maxGauge) Set(v float64) {
	g.mu.Lock()
	g.max = max(g.max, v)
	g.mu.Unlock()
	g.Gauge.Set(v)
}

func (g *maxGauge) highest() float64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.max
}

// TestPinLimit: with room for one pin, three files are still all rescued,
// one after the other, and never more than one is pinned at a time.
func TestPinLimit(t *testing.T) {
	pins := &maxGauge{}
	h := startHooked(t, "tmpfs", func(w, r string) *config.Config { return testConfig(t, w, r, "", "") },
		func(o *Options) {
			o.MaxPins = 1
			o.Config.Scan.Interval = config.Duration(50 * time.Millisecond)
		}, hooks{beforeRun: func(d *Daemon) {
			pins.Gauge = d.m.PinsHeld
			d.m.PinsHeld = pins
		}})
	var steps []testproc.Step
	var paths []string
	for i := range 3 {
		p := filepath.Join(h.watched, fmt.Sprintf("%d.log", i))
		write(t, p, p)
		paths = append(paths, p)
		steps = append(steps, testproc.Open(p, "r"))
	}
	for _, p := range paths {
		steps = append(steps, testproc.Unlink(p))
	}
	testproc.Start(t, steps...)
	for _, p := range paths {
		h.wait("rescue of "+p, 1, msgPath("file rescued", p))
	}
	if got := pins.highest(); got != 1 {
		t.Errorf("at most %v pins held at once, want 1 (MaxPins)", got)
	}
	for _, e := range h.logs.FilterMessage("pin limit reached, deferring").All() {
		if n, _ := field(e, "pins").(int64); n > 1 {
			t.Errorf("deferred with %d pins held, above MaxPins 1", n)
		}
	}
}

// TestInodeReuse: on ext4 a freed inode number is handed to the next new
// file; a new deleted file with a rescued file's number is rescued too.
func TestInodeReuse(t *testing.T) {
	h := start(t, "ext4", func(w, r string) *config.Config { return testConfig(t, w, r, "", "") },
		func(o *Options) { o.Config.Scan.Interval = config.Duration(time.Hour) })
	first := filepath.Join(h.watched, "first.log")
	write(t, first, "first\n")
	var st syscall.Stat_t
	if err := syscall.Stat(first, &st); err != nil {
		t.Fatal(err)
	}
	ino := st.Ino
	hold := testproc.Start(t, testproc.Open(first, "r"), testproc.Unlink(first))
	h.wait("first rescue", 1, msgPath("file rescued", first))
	hold.Exit(t)
	// The inode is freed once its last descriptor closes: the holder's
	// (it exited) and the daemon's pin, released just after the event.
	h.waitFor("the pin's release", func() bool { return value(h.d.m.PinsHeld) == 0 })
	// ext4 gives a new file the lowest free inode of its directory's
	// group (find_inode_bit), which is now the freed one unless a
	// lower one was freed too; the files made meanwhile are kept, so
	// each attempt gets a different number.
	var second string
	var got []uint64
	for i := 0; i < 200 && second == ""; i++ {
		p := filepath.Join(h.watched, fmt.Sprintf("second%d.log", i))
		write(t, p, "second\n")
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		got = append(got, st.Ino)
		if st.Ino == ino {
			second = p
		}
	}
	if second == "" {
		t.Fatalf("ext4 did not hand out the freed inode %d again in %d new files (got %v): the test cannot check reuse", ino, len(got), got)
	}
	testproc.Start(t, testproc.Open(second, "r"), testproc.Unlink(second))
	h.wait("rescue of the reused inode", 1, msgPath("file rescued", second))
}

// TestReloadAndStop: Reload swaps the rules; cancelling Run sends
// STOPPING=1 and returns.
func TestReloadAndStop(t *testing.T) {
	var cfg2 *config.Config
	h := start(t, "tmpfs", func(w, r string) *config.Config {
		other := filepath.Join(filepath.Dir(w), "other")
		cfg2 = testConfig(t, other, r, "", "")
		return testConfig(t, w, r, "", "")
	}, nil)
	other := filepath.Join(h.mnt, "other")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := h.d.Reload(context.Background(), cfg2); err != nil {
		t.Fatal(err)
	}
	h.wait("config reloaded", 1, func(e observer.LoggedEntry) bool { return e.Message == "config reloaded" })
	p := filepath.Join(other, "o.log")
	write(t, p, "other\n")
	testproc.Start(t, testproc.Open(p, "r"), testproc.Unlink(p))
	h.wait("rescue in the new rule's tree", 1, msgPath("file rescued", p))

	h.stop()
	h.note("STOPPING=1")
	for _, m := range []string{"relinkd stopping", "relinkd stopped"} {
		if n := len(h.logs.FilterMessage(m).All()); n != 1 {
			t.Errorf("%d %q events, want 1", n, m)
		}
	}
}

// value reads a counter or gauge.
func value(m prometheus.Metric) float64 {
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		panic(err)
	}
	if c := out.GetCounter(); c != nil {
		return c.GetValue()
	}
	return out.GetGauge().GetValue()
}

// TestIgnoredInodeNewHolder: an inode no rule matches for one holder is
// matched again for a holder not seen with it before. Here the rule names
// a user: root's descriptor is ignored, uid 65534's descriptor on the same
// deleted file is rescued. (Without this, a holder could also get an inode
// it does not own ignored for everyone by flipping a descriptor so that a
// sweep pairs that inode with a name no rule matches.)
func TestIgnoredInodeNewHolder(t *testing.T) {
	h := start(t, "tmpfs", func(w, r string) *config.Config {
		// Sweeps only: a full pass lists candidates by pid, so root's
		// descriptor is always looked at first (an event round may
		// take the newest process first).
		cfg, err := config.Parse("test.yaml", []byte(fmt.Sprintf(`scan:
  interval: 1s
  events: false
watch:
  - name: nobody
    paths: [%q]
    users: ["65534"]
    action: rescue
rescue:
  dirs: [%q]
  min_free: 1%%
  per_user: {max_files: 0, max_bytes: 0}
`, w+"/**", r)))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}, func(o *Options) { o.Config.Scan.Interval = config.Duration(100 * time.Millisecond) })
	testfs.Reachable(t, h.watched)
	p := filepath.Join(h.watched, "shared.log")
	write(t, p, "shared data\n")
	// Root's holder first, so that its lower pid comes first in a sweep.
	root := testproc.Start(t, testproc.Open(p, "r"))
	nobody := testproc.StartWith(t, testproc.Options{UID: 65534, GID: 65534}, testproc.Open(p, "r"))
	root.Do(t, testproc.Unlink(p))
	ev := h.wait("file rescued", 1, msgPath("file rescued", p))
	if got := field(ev[0], "pid"); got != int64(nobody.PID) {
		t.Errorf("rescued through pid %v, want %d (uid 65534)", got, nobody.PID)
	}
	if n := len(h.logs.Filter(func(e observer.LoggedEntry) bool {
		return e.Message == "no watch rule matches" && field(e, "pid") == int64(root.PID)
	}).All()); n == 0 {
		t.Errorf("root's descriptor was never looked at and ignored")
	}
}
