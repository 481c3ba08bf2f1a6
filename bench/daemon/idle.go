package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"
)

// idleCosts measures the daemon's CPU time and peak RSS over o.idle on a
// host whose processes hold -busy-fds files each (as the busy host's do,
// a few inside the watched tree, so that every sweep fills the holder
// index), for each of o.idleProcs, with sweeps every 30 s (the default
// interval); then, at the largest count, with the default configuration.
func idleCosts(o *options, tmp string) error {
	root := filepath.Join(tmp, "idle")
	l, err := newLayout(root)
	if err != nil {
		return err
	}
	cfg, err := l.config("idle.yaml", "30s", "info", true, o.backend)
	if err != nil {
		return err
	}
	h := &busyHost{l: l, fds: o.busyFDs, inTree: o.inTree}
	defer h.stop()
	counts := slices.Clone(o.idleProcs)
	slices.Sort(counts)
	for _, n := range counts {
		if err := h.grow(n); err != nil {
			return err
		}
		label := fmt.Sprintf("%d processes x %d open files, bench rules, scan.interval 30s", n, o.busyFDs)
		if err := idleCost(o, root, cfg, label, h); err != nil {
			return err
		}
	}
	label := fmt.Sprintf("%d processes x %d open files, default configuration", counts[len(counts)-1], o.busyFDs)
	shipped, err := defaultConfig(root, o.backend)
	if err != nil {
		return err
	}
	return idleCost(o, root, shipped, label, h)
}

// defaultConfig returns the shipped configuration, or with -backend a copy
// in dir that differs from it only in scan.backend.
func defaultConfig(dir, backend string) (string, error) {
	const shipped = "configs/relinkd.yaml"
	if backend == "" {
		return shipped, nil
	}
	b, err := os.ReadFile(shipped)
	if err != nil {
		return "", err
	}
	line := regexp.MustCompile(`(?m)^  backend: \w+$`)
	if len(line.FindAll(b, -1)) != 1 {
		return "", fmt.Errorf("%s: no single scan.backend line to replace", shipped)
	}
	p := filepath.Join(dir, "default.yaml")
	return p, os.WriteFile(p, line.ReplaceAll(b, []byte("  backend: "+backend)), 0o644)
}

func idleCost(o *options, root, cfg, label string, h *busyHost) error {
	fmt.Printf("idle cost: %s, %v (the last process holds %d descriptors; load %s)\n", label, o.idle,
		h.descriptors(), loadavg())
	d, err := startDaemon(o, root, cfg, nil)
	if err != nil {
		return err
	}
	defer d.stop()
	fmt.Printf("  start-up to READY=1 (first full sweep): %v, sweeping with %s\n", d.ready.Round(time.Millisecond), d.scanBackend())
	// Full sweeps run every 30 s from READY=1 on. The window is placed
	// between them, so that it holds a known number: from 2 s to 28 s
	// after READY=1 none (what the daemon costs between sweeps), then
	// o.idle from 28 s on, which holds one sweep per 30 s of it.
	pid := d.pid()
	const interval = 30 * time.Second
	at := func(since time.Duration) (time.Duration, error) {
		time.Sleep(time.Until(d.started.Add(d.ready + since)))
		return cpuTime(pid)
	}
	b0, err := at(2 * time.Second)
	if err != nil {
		return err
	}
	b1, err := at(interval - 2*time.Second)
	if err != nil {
		return err
	}
	c1, err := at(interval - 2*time.Second + o.idle)
	if err != nil {
		return err
	}
	sweeps := int(o.idle / interval)
	hwm, rss := memKiB(pid)
	between := float64(b1-b0) / float64(interval-4*time.Second)
	fmt.Printf("  CPU time over %v (%d full sweeps): %v = %.2f%% of one core (target <= 1%%)\n", o.idle, sweeps, c1-b1,
		100*(c1-b1).Seconds()/o.idle.Seconds())
	fmt.Printf("  between sweeps: %.3f%% of one core; each full sweep: %v\n", 100*between,
		((c1 - b1 - time.Duration(between*float64(o.idle))) / time.Duration(max(sweeps, 1))).Round(time.Millisecond))
	fmt.Printf("  CPU time since start, first sweep included: %v\n", c1)
	fmt.Printf("  peak RSS (VmHWM): %.1f MiB (target <= 40 MiB), RSS now %.1f MiB\n", mib(hwm), mib(rss))
	return nil
}
