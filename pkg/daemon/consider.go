package daemon

import (
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/fsguard"
	"github.com/relinkd/relinkd/internal/logging"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/relink"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// consider is the fast path for one candidate: dedupe by inode, match the
// rules, pin at once, match the rules again on the pinned file, queue. now
// is the start of the sweep that found it.
func (d *Daemon) consider(c *scanner.Candidate, now time.Time) {
	if c.PID == d.self {
		return // our own pins
	}
	if !d.fresh(c, now) {
		return
	}
	// First sight (or a retry): the birth time is read after the pin
	// (through the daemon's own descriptor) for rescues, so that nothing
	// stands between detection and pin; for the rest it is read now.
	bt := func() int64 {
		t, _ := d.birthTime(c)
		return t
	}

	pol := d.pol.Load()
	rule, ok := pol.Match(c)
	if !ok {
		d.log.Debug("no watch rule matches", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD))
		d.ledger.record(c, stIgnored, bt())
		return
	}
	if rule.Action == config.ActionReport {
		d.ledger.record(c, stReported, bt())
		d.reportOpen(c, rule.Name)
		return
	}

	size := max(c.Size, 0)
	if f, ok := d.budget.check(c.PID, size); !ok {
		// Not recorded: its holder is swept again as soon as a pin is
		// released (see budget.room), and by every later sweep.
		d.m.Skips.WithLabelValues("budget").Inc()
		if f.warn {
			d.log.Warn("rescue budget reached", zap.String("budget", f.budget), zap.Int("pins", f.pins),
				zap.Int("max_pins", d.opt.MaxPins), zap.Int64("pinned_bytes", f.pinned), zap.Int64("max_pinned_bytes", d.opt.MaxPinnedBytes),
				zap.String("detail", "files beyond it are taken up as soon as a pin is released"))
		}
		d.log.Debug("rescue deferred", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD),
			zap.String("reason", "budget"), zap.String("budget", f.budget))
		return
	}

	pin, pbt, err := d.pin(c)
	if err != nil {
		switch {
		case errors.Is(err, fsguard.ErrUnresponsive), errors.Is(err, fsguard.ErrTooManyStuck):
			// Not recorded: taken up again once the filesystem answers.
			d.log.Debug("pin: filesystem not answering", logging.Path("path", c.Path), zap.Int("pid", c.PID),
				zap.Int("fd", c.FD), zap.Int("mnt_id", c.MntID), zap.Error(err))
		case errors.Is(err, relink.ErrVanished), errors.Is(err, relink.ErrIdentity):
			// Another descriptor of the same inode may still work; a
			// later sweep decides. Nothing to report: a holder that
			// reuses a number for another file between the sweep and
			// the pin is common, and one that flips it on purpose
			// gains nothing but this line.
			d.log.Debug("pin: candidate gone", zap.Int("pid", c.PID), zap.Int("fd", c.FD), zap.Error(err))
		case errors.Is(err, relink.ErrNotRegular):
			d.ledger.record(c, stIgnored, bt())
		default:
			d.ledger.recordFailure(c, now, d.interval(), bt())
			d.m.Failures.Inc()
			d.pipe.PinFailed(c, err)
		}
		return
	}
	// From here on the candidate is the pinned file: the same name and
	// inode (Pin refuses anything else), with the owner, size and mount
	// read through the daemon's own descriptor. The rules decide on that.
	pc := pin.Candidate()
	if rule, ok = pol.Match(&pc); !ok || rule.Action == config.ActionReport {
		if err := pin.Close(); err != nil {
			d.log.Warn("release pin", zap.Int("pid", pc.PID), zap.Int("fd", pc.FD), zap.Error(err))
		}
		if !ok {
			d.log.Debug("no watch rule matches the pinned file", logging.Path("path", pc.Path), zap.Int("pid", pc.PID),
				zap.Int("fd", pc.FD), zap.Int64("size", pc.Size), zap.Uint32("owner", pc.Owner))
			d.ledger.record(&pc, stIgnored, pbt)
			return
		}
		d.ledger.record(&pc, stReported, pbt)
		d.reportOpen(&pc, rule.Name)
		return
	}
	if d.takePrior(&pc, rule, pin, pbt, now) {
		return
	}
	d.ledger.record(&pc, stQueued, pbt)
	d.budget.take(max(pc.Size, 0))
	// Never blocks: the queue has room for MaxPins jobs.
	d.workers.queue(&job{c: pc, rule: rule, pin: pin, found: now})
}

// fresh reports whether c needs handling: its inode was not seen before,
// its number now belongs to another file, or its rescue failed and the
// retry is due. Otherwise c only joins the inode's holders.
func (d *Daemon) fresh(c *scanner.Candidate, now time.Time) bool {
	d.sched.notePID(c)
	s := d.ledger.see(c, now)
	if s.check {
		// A holder not seen with this inode before: inode numbers are
		// reused once a file is freed, so tell a new file from the same
		// one by its birth time (statx(2) STATX_BTIME).
		bt, alive := d.birthTime(c)
		if !alive {
			return false
		}
		s = d.ledger.confirm(c, s.entry, bt, now)
	}
	if s.wait {
		return d.retrySpace(c, s.spaceWait)
	}
	if s.retry {
		d.logRetry(c, s.failures)
	}
	return s.handle
}

// retrySpace says whether a file that did not fit is tried again now.
func (d *Daemon) retrySpace(c *scanner.Candidate, w spaceWait) bool {
	if !d.spaceBack(w) {
		return false
	}
	d.log.Debug("room again at the destination, retrying", logging.Path("path", c.Path), zap.Int("pid", c.PID),
		zap.Int("fd", c.FD), zap.String("root", w.root))
	return true
}

func (d *Daemon) logRetry(c *scanner.Candidate, failures int) {
	d.log.Debug("retrying failed rescue", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD),
		zap.Int("failures", failures))
}

func (d *Daemon) reportOpen(c *scanner.Candidate, rule string) {
	d.m.Reports.Inc()
	d.ev.Open(c, rule)
}

// birthTime is birthTime of c's file, under the guard: false when the
// descriptor is gone or its filesystem does not answer.
func (d *Daemon) birthTime(c *scanner.Candidate) (int64, bool) {
	var bt int64
	var alive bool
	if err := d.guard.Do(c.MntID, func() { bt, alive = birthTime(d.opt.ProcRoot, c) }, nil); err != nil {
		return 0, false
	}
	return bt, alive
}

// pin pins c under the guard, with the birth time read through the pin.
// A pin that comes back after the guard gave up on it is closed.
func (d *Daemon) pin(c *scanner.Candidate) (*relink.Pin, int64, error) {
	var p *relink.Pin
	var bt int64
	var err error
	cc := *c
	gerr := d.guard.Do(c.MntID, func() {
		if p, err = d.engine.Pin(cc); err == nil {
			bt, _ = birthTimeFD(p.FD())
		}
	}, func() {
		if p != nil {
			p.Close()
		}
	})
	if gerr != nil {
		return nil, 0, gerr
	}
	return p, bt, err
}
