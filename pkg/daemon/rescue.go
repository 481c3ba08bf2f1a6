package daemon

import (
	"context"
	"sync"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/logging"
	"github.com/relinkd/relinkd/pkg/pipeline"
	"github.com/relinkd/relinkd/pkg/policy"
)

// handle is what a worker does with a job: resume the follow an earlier
// daemon left, or rescue.
func (d *Daemon) handle(ctx context.Context, j *job, wg *sync.WaitGroup, progress func()) {
	if j.prior != nil {
		d.resume(ctx, j, wg, progress)
		return
	}
	d.rescue(ctx, j, wg, progress)
}

// rescue runs a job through the pipeline (decide, rescue, release what
// the policy reserved on failure; the pipeline logs the event) and maps
// its outcome onto the ledger and the metrics; a rescued file whose
// writer is still at it is followed.
func (d *Daemon) rescue(ctx context.Context, j *job, wg *sync.WaitGroup, progress func()) {
	c := &j.c
	out := d.pipe.Run(ctx, pipeline.Request{Pin: j.pin, Rule: j.rule, Policy: d.pol.Load(), Progress: progress})
	dec := out.Decision
	switch out.Kind {
	case pipeline.Ignored:
		d.unpin(j, stIgnored)
	case pipeline.Reported:
		d.m.Reports.Inc()
		d.unpin(j, stReported)
	case pipeline.Skipped:
		d.m.Skips.WithLabelValues(dec.Reason).Inc()
		d.unpin(j, stSkipped)
	case pipeline.NoSpace:
		// Tried again once the destination has the room, not on a
		// backoff.
		d.m.Skips.WithLabelValues(policy.ReasonSpace).Inc()
		d.unpinNoSpace(j, dec.Root, uint64(max(c.Size, 0)), dec.MinFreeBytes)
	case pipeline.Cancelled:
		// Shutdown cancelled it by design and nothing was left
		// behind: no failure.
		d.abandon(j)
	case pipeline.Failed:
		// A later sweep retries.
		d.m.Failures.Inc()
		d.unpin(j, stFailed)
	case pipeline.Rescued:
		rs := out.Rescued
		res := rs.Result()
		d.m.Rescues.WithLabelValues(string(res.Method)).Inc()
		d.m.RescuedBytes.Add(float64(res.Bytes))
		if !dec.Follow || !c.Writable() {
			d.unpin(j, stRescued)
			return
		}
		d.follow(ctx, j, rs, wg)
	}
}

// follow follows a rescued job's file until its last writer closes it,
// within the follow budget, and releases the pin then.
func (d *Daemon) follow(ctx context.Context, j *job, rs *pipeline.Rescue, wg *sync.WaitGroup) {
	c := &j.c
	res := rs.Result()
	if ok, warn := d.budget.startFollow(); !ok {
		// The copy stands as it is: a one-shot rescue, not a loss.
		if warn {
			d.log.Warn("follow budget reached", zap.Int("max_follows", d.opt.MaxFollows),
				zap.String("detail", "files rescued beyond it are kept as copied, without following their writers"))
		}
		d.log.Debug("follow skipped", logging.Path("path", c.Path), logging.Path("rescued_to", []byte(res.Path)),
			zap.Int("pid", c.PID), zap.Int("fd", c.FD), zap.String("reason", "budget"), zap.String("budget", "follows"))
		d.unpin(j, stRescued)
		return
	}
	// Follow runs as long as the writer: off the worker pool, still
	// holding the pin (which counts against MaxPins).
	wg.Add(1)
	go func() {
		defer wg.Done()
		fo := rs.Follow(ctx)
		switch fo.End {
		case pipeline.Finished, pipeline.Truncated:
			if fo.Result.Bytes > res.Bytes {
				d.m.RescuedBytes.Add(float64(fo.Result.Bytes - res.Bytes))
			}
		case pipeline.FollowFailed:
			d.m.Failures.Inc()
		}
		d.budget.endFollow()
		d.unpin(j, stRescued)
	}()
}

// unpin releases a job's pin and records the inode's final state.
func (d *Daemon) unpin(j *job, st state) {
	d.release(j)
	d.ledger.finish(j.c.Key(), st, j.found, d.interval())
}

// unpinNoSpace releases a job's pin for a file that did not fit in root:
// a copy needs need bytes there above minFree.
func (d *Daemon) unpinNoSpace(j *job, root string, need, minFree uint64) {
	d.release(j)
	d.ledger.noSpace(j.c.Key(), spaceWait{root: root, need: need, min: minFree})
}

// spaceBack reports whether the destination of a file that did not fit
// has the room now (statfs, no more): only then is it tried again.
func (d *Daemon) spaceBack(w spaceWait) bool {
	avail, _, err := d.pol.Load().Host().FreeSpace(w.root)
	return err == nil && avail >= w.need+w.min
}

// abandon releases the pin of a job given up at shutdown and forgets its
// inode, so that nothing about it holds if it is looked at again.
func (d *Daemon) abandon(j *job) {
	d.release(j)
	d.ledger.abandon(j.c.Key())
}

// release closes a job's pin and takes it off the pin counts.
func (d *Daemon) release(j *job) {
	if err := j.pin.Close(); err != nil {
		d.log.Warn("release pin", zap.Int("pid", j.c.PID), zap.Int("fd", j.c.FD), zap.Error(err))
	}
	d.budget.give(max(j.c.Size, 0))
}
