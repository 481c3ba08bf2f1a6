package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/logging"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/daemon"
)

// cmdRun is `relinkd run [--config FILE]`: the daemon, in the foreground.
// SIGINT/SIGTERM (ctx) stop it; SIGHUP reloads the configuration.
func cmdRun(ctx context.Context, e env, args []string) error {
	fl := newFlagSet("run")
	configPath := fl.String("config", "", "configuration `file` (default "+config.DefaultPath+" if present, else the embedded default)")
	var hf hostFlags
	hf.add(fl)
	pos, err := parseArgs(e.stdout, fl, "[FLAGS]", args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: run takes no arguments (got %q)", errUsage, pos)
	}
	mode, err := hf.resolve(fl)
	if err != nil {
		return err
	}

	// Subscribe to SIGHUP before anything else, so that a reload sent
	// right after start-up is never the default action (exit).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	cfg, source, err := config.Resolve(*configPath)
	if err != nil {
		return fmt.Errorf("config %s: %w", source, err)
	}
	log, err := logging.New(e.stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return fmt.Errorf("config %s: %w", source, err)
	}
	defer log.Sync()

	opt := daemon.Options{
		Config:       cfg,
		ConfigPath:   source,
		ProcRoot:     mode.procRoot,
		HostRoot:     mode.hostRoot,
		Version:      version,
		FSTimeout:    time.Duration(cfg.Scan.FSTimeout),
		StallTimeout: time.Duration(cfg.Scan.StallTimeout),
		Notify: func(state string) {
			if _, err := sd.SdNotify(false, state); err != nil {
				log.Debug("sd_notify", zap.String("state", state), zap.Error(err))
			}
		},
	}
	// WATCHDOG_USEC is set when the unit has WatchdogSec=; ping at half.
	if iv, err := sd.SdWatchdogEnabled(false); err == nil && iv > 0 {
		opt.WatchdogInterval = iv / 2
	}
	d, err := daemon.New(opt, log)
	if err != nil {
		return err
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		// Only this goroutine reloads: running is the configuration in force.
		running := cfg
		for {
			select {
			case <-runCtx.Done():
				return
			case <-hup:
				running = reload(runCtx, d, source, running, log)
			}
		}
	}()
	return d.Run(runCtx)
}

// reload re-reads the configuration from where it came from and returns
// the one in force afterwards. An invalid file, or one that would swap the
// running rules for the built-in ones without saying so (an empty or
// truncated file), leaves the running configuration in place. Loading
// never blocks: a FIFO or a device at the path is an error at once.
func reload(ctx context.Context, d *daemon.Daemon, source string, running *config.Config, log *zap.Logger) *config.Config {
	path := source
	if source == "(embedded)" {
		path = ""
	}
	cfg, src, err := config.Resolve(path)
	if err == nil {
		err = config.CheckReload(running, cfg)
	}
	if err != nil {
		var errs config.Errors
		fields := []zap.Field{zap.String("config", src), zap.Error(err)}
		if errors.As(err, &errs) {
			list := make([]string, len(errs))
			for i, fe := range errs {
				list[i] = fe.Error()
			}
			fields = append(fields, zap.Strings("errors", list))
		}
		log.Error("config reload failed", fields...)
		return running
	}
	if err := d.Reload(ctx, cfg); err != nil {
		// Shutting down: the new configuration was not applied.
		return running
	}
	return cfg
}
