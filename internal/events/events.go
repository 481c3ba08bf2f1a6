// Package events writes the rescue events of the README's event table
// ("file rescued", "rescue skipped", "rescue failed", "follow finished"
// and their companions), each with its fields, from one place: the rescue
// pipeline (pkg/pipeline, shared by the daemon and `relinkd rescue`) and the
// daemon's fast path call these instead of composing fields, so that one
// event has the same fields whoever logs it.
//
// Every event names the file by its holder's path, pid and descriptor;
// names that are not UTF-8 carry their exact bytes (logging.Path), and a
// file in another mount namespace carries mntns and container_id
// (scanner.Candidate.ContainerField).
package events

import (
	"time"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/logging"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// Emitter writes events to a logger. The zero value discards them.
type Emitter struct{ log *zap.Logger }

// New returns an Emitter writing to log (nil: discarded).
func New(log *zap.Logger) Emitter {
	if log == nil {
		log = zap.NewNop()
	}
	return Emitter{log: log}
}

func (e Emitter) logger() *zap.Logger {
	if e.log == nil {
		return zap.NewNop()
	}
	return e.log
}

// file is the fields that say which file an event is about.
func file(c *scanner.Candidate) []zap.Field {
	return []zap.Field{logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD), c.ContainerField()}
}

// Rule is the "rule" field: the rule's name, or null for none.
func Rule(name string) zap.Field {
	if name == "" {
		return zap.Reflect("rule", nil)
	}
	return zap.String("rule", name)
}

func with(base []zap.Field, more ...zap.Field) []zap.Field { return append(base, more...) }

// Rescued: "file rescued", info.
func (e Emitter) Rescued(c *scanner.Candidate, to, method string, bytes int64, rule string, took time.Duration) {
	e.logger().Info("file rescued", with(file(c), logging.Path("rescued_to", []byte(to)), zap.String("method", method),
		zap.Int64("bytes", bytes), zap.String("comm", c.Comm), zap.Uint32("uid", c.UID), Rule(rule),
		zap.Duration("duration", took))...)
}

// Skipped: "rescue skipped", info (nothing went wrong: a rule, a limit or
// the room said no). more adds fields of the kind of skip.
func (e Emitter) Skipped(c *scanner.Candidate, reason, rule, detail string, more ...zap.Field) {
	e.logger().Info("rescue skipped", with(file(c), append([]zap.Field{zap.String("reason", reason), Rule(rule),
		zap.String("detail", detail)}, more...)...)...)
}

// Failed: "rescue failed", error. more adds what was being done (method,
// op, rescued_to).
func (e Emitter) Failed(c *scanner.Candidate, err error, more ...zap.Field) {
	e.logger().Error("rescue failed", with(file(c), append(more, zap.Error(err))...)...)
}

// Cancelled: "rescue cancelled", info: shutdown or an interrupted command
// abandoned the rescue; nothing was published.
func (e Emitter) Cancelled(c *scanner.Candidate, method string) {
	e.logger().Info("rescue cancelled", with(file(c), zap.String("method", method))...)
}

// FollowFinished: "follow finished", info: the last writer closed the
// file; bytes is its final size.
func (e Emitter) FollowFinished(c *scanner.Candidate, to string, bytes int64) {
	e.logger().Info("follow finished", with(file(c), logging.Path("rescued_to", []byte(to)), zap.Int64("bytes", bytes))...)
}

// FollowStopped: "follow stopped", info: the follow ended before the last
// writer, for reason (shutdown, truncation), with bytes kept.
func (e Emitter) FollowStopped(c *scanner.Candidate, to string, bytes int64, reason string) {
	e.logger().Info("follow stopped", with(file(c), logging.Path("rescued_to", []byte(to)), zap.Int64("bytes", bytes),
		zap.String("reason", reason))...)
}

// AlreadyRescued: "already rescued", info: an earlier daemon rescued the
// file (its sidecar says so and checks out); follow says whether its
// follow is taken up.
func (e Emitter) AlreadyRescued(c *scanner.Candidate, to, method string, follow bool) {
	e.logger().Info("already rescued", with(file(c), logging.Path("rescued_to", []byte(to)), zap.String("method", method),
		zap.Bool("follow", follow))...)
}

// Open: "deleted file open", info: a report rule matched a deleted file
// still open (action: report).
func (e Emitter) Open(c *scanner.Candidate, rule string) {
	e.logger().Info("deleted file open", with(file(c), zap.String("comm", c.Comm), zap.Uint32("uid", c.UID),
		zap.Int64("size", c.Size), Rule(rule))...)
}
