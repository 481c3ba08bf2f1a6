package daemon

import (
	"context"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/policy"
)

type reloadReq struct {
	cfg  *config.Config
	done chan struct{}
}

// Reload replaces the configuration: rules, rescue settings and watched
// directories take effect for the next candidate. Files already pinned or
// rescued (or reported) are not revisited; skipped, failed and unmatched
// ones are looked at again under the new rules. It returns once the main loop applied it.
func (d *Daemon) Reload(ctx context.Context, cfg *config.Config) error {
	r := reloadReq{cfg: cfg, done: make(chan struct{})}
	select {
	case d.reload <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// apply installs a new configuration (from the main loop).
func (d *Daemon) apply(cfg *config.Config) {
	oldPol := d.pol.Load()
	old := oldPol.Config()
	pol := policy.New(cfg, d.log, policy.WithProcRoot(d.opt.ProcRoot), policy.WithHostRoot(d.opt.HostRoot))
	// Keep the per-user grants and the rescue roots' usage.
	pol.Inherit(oldPol)
	d.pol.Store(pol)
	d.ledger.reconsider()
	d.track(cfg)
	d.trees.reload(watchRoots(cfg), cfg.Scan.Events)
	fields := []zap.Field{zap.String("config", cfg.File), zap.Int("rules", len(cfg.Watch))}
	if old.Log != cfg.Log {
		fields = append(fields, zap.String("note", "log.level and log.format take effect at restart"))
	}
	if old.Metrics != cfg.Metrics {
		fields = append(fields, zap.String("note_metrics", "metrics.listen takes effect at restart"))
	}
	if old.Scan.Events != cfg.Scan.Events && d.trees.watcher() == nil && cfg.Scan.Events {
		fields = append(fields, zap.String("note_events", "scan.events turned on takes effect at restart"))
	}
	d.log.Info("config reloaded", fields...)
}
