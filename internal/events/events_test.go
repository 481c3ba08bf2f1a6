package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/relinkd/relinkd/pkg/scanner"
)

// TestFields: every event carries the fields the README's event table
// gives it, with the file named exactly (base64 beside a name that is not
// UTF-8) and the container fields for a file in another mount namespace.
func TestFields(t *testing.T) {
	host := &scanner.Candidate{PID: 7, FD: 3, Path: []byte("/var/log/app.log"), Comm: "app", UID: 1000, Size: 42}
	odd := &scanner.Candidate{PID: 8, FD: 4, Path: []byte("/tmp/bad\xffname"), MntNS: 4026532000, ContainerID: "abc123"}
	for _, tt := range []struct {
		msg  string
		emit func(Emitter, *scanner.Candidate)
		want []string
	}{
		{"file rescued", func(e Emitter, c *scanner.Candidate) {
			e.Rescued(c, "/.relinkd/var/log/app.log", "copy", 42, "logs", time.Millisecond)
		}, []string{"rescued_to", "method", "bytes", "comm", "uid", "rule", "duration"}},
		{"rescue skipped", func(e Emitter, c *scanner.Candidate) { e.Skipped(c, "space", "logs", "no room") },
			[]string{"reason", "rule", "detail"}},
		{"rescue failed", func(e Emitter, c *scanner.Candidate) { e.Failed(c, errors.New("boom"), zap.String("method", "copy")) },
			[]string{"error", "method"}},
		{"rescue cancelled", func(e Emitter, c *scanner.Candidate) { e.Cancelled(c, "copy") }, []string{"method"}},
		{"follow finished", func(e Emitter, c *scanner.Candidate) { e.FollowFinished(c, "/r/x", 99) }, []string{"rescued_to", "bytes"}},
		{"follow stopped", func(e Emitter, c *scanner.Candidate) { e.FollowStopped(c, "/r/x", 99, "shutdown") },
			[]string{"rescued_to", "bytes", "reason"}},
		{"already rescued", func(e Emitter, c *scanner.Candidate) { e.AlreadyRescued(c, "/r/x", "link", true) },
			[]string{"rescued_to", "method", "follow"}},
		{"deleted file open", func(e Emitter, c *scanner.Candidate) { e.Open(c, "logs") }, []string{"comm", "uid", "size", "rule"}},
	} {
		t.Run(strings.ReplaceAll(tt.msg, " ", "_"), func(t *testing.T) {
			for _, c := range []*scanner.Candidate{host, odd} {
				ev := emit(t, func(e Emitter) { tt.emit(e, c) })
				want := append([]string{"level", "ts", "msg", "path", "pid", "fd"}, tt.want...)
				if c.MntNS != 0 {
					want = append(want, "mntns", "container_id", "path_base64")
				}
				for _, k := range want {
					if _, ok := ev[k]; !ok {
						t.Errorf("%s for %q: no %q field in %v", tt.msg, c.Path, k, ev)
					}
				}
				if ev["msg"] != tt.msg || ev["pid"] != float64(c.PID) || ev["fd"] != float64(c.FD) {
					t.Errorf("%s: got %v", tt.msg, ev)
				}
				if c.MntNS == 0 && slices.ContainsFunc([]string{"mntns", "container_id", "path_base64"}, func(k string) bool { _, ok := ev[k]; return ok }) {
					t.Errorf("%s for a host file with a UTF-8 name: container or base64 fields in %v", tt.msg, ev)
				}
			}
		})
	}
}

// TestRuleNull: a rescue without a rule (relinkd rescue of a named file)
// says rule: null, not "".
func TestRuleNull(t *testing.T) {
	ev := emit(t, func(e Emitter) {
		e.Rescued(&scanner.Candidate{PID: 1, FD: 1, Path: []byte("/x")}, "/r/x", "link", 1, "", 0)
	})
	if v, ok := ev["rule"]; !ok || v != nil {
		t.Errorf("rule: want null, got %v (present %v)", v, ok)
	}
}

// TestZero: the zero Emitter discards, without a nil dereference.
func TestZero(t *testing.T) {
	var e Emitter
	e.Rescued(&scanner.Candidate{Path: []byte("/x")}, "/y", "copy", 1, "r", 0)
}

// emit runs f on an Emitter writing JSON and returns the one event.
func emit(t *testing.T, f func(Emitter)) map[string]any {
	t.Helper()
	var buf bytes.Buffer
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	f(New(zap.New(zapcore.NewCore(enc, zapcore.AddSync(&buf), zapcore.DebugLevel))))
	var ev map[string]any
	if err := json.Unmarshal(buf.Bytes(), &ev); err != nil {
		t.Fatalf("not one JSON event: %q: %v", buf.String(), err)
	}
	return ev
}
