package daemon

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/pkg/policy"
)

// pruner applies rescue.retention (age) and rescue.max_total_size to
// every rescue root, at start and every interval, and keeps a prune from
// running beside a rescue that publishes: a directory a rescue is about
// to link its O_TMPFILE into looks empty, and the pruner removes empty
// ones. Safe for concurrent use.
type pruner struct {
	log      *zap.Logger
	interval time.Duration         // Options.PruneInterval
	policy   func() *policy.Policy // the policy in force

	// publishing is held shared by every rescue and exclusively by each
	// prune of a root.
	publishing sync.RWMutex
}

// publish runs fn (a rescue that links into a rescue root) while no root
// is being pruned.
func (r *pruner) publish(fn func()) {
	r.publishing.RLock()
	defer r.publishing.RUnlock()
	fn()
}

// run prunes at start and every interval until ctx ends.
func (r *pruner) run(ctx context.Context) {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		r.pruneAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pruneAll prunes every rescue root once, each while no rescue publishes.
func (r *pruner) pruneAll(ctx context.Context) {
	pol := r.policy()
	for _, root := range pol.Roots() {
		if ctx.Err() != nil {
			return
		}
		r.publishing.Lock()
		res, err := pol.Prune(root)
		r.publishing.Unlock()
		if err != nil {
			r.log.Warn("prune failed", zap.String("root", root), zap.Error(err))
			continue
		}
		if res.Removed > 0 || res.StaleTemps > 0 {
			r.log.Info("rescued files pruned", zap.String("root", root), zap.Int("removed", res.Removed),
				zap.Uint64("removed_bytes", res.RemovedBytes), zap.Uint64("kept_bytes", res.Kept),
				zap.Int("stale_temps", res.StaleTemps))
		}
	}
}
