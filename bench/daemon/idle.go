package main

import (
	"fmt"
	"path/filepath"
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
	return idleCost(o, root, "configs/relinkd.yaml", label, h)
}

func idleCost(o *options, root, cfg, label string, h *busyHost) error {
	fmt.Printf("idle cost: %s, %v (the last process holds %d descriptors; load %s)\n", label, o.idle,
		h.descriptors(), loadavg())
	d, err := startDaemon(o.bin, root, cfg, nil)
	if err != nil {
		return err
	}
	defer d.stop()
	fmt.Printf("  start-up to READY=1 (first full sweep): %v\n", d.ready.Round(time.Millisecond))
	pid := d.pid()
	c0, err := cpuTime(pid)
	if err != nil {
		return err
	}
	t0 := time.Now()
	time.Sleep(o.idle)
	c1, err := cpuTime(pid)
	if err != nil {
		return err
	}
	elapsed := time.Since(t0)
	hwm, rss := memKiB(pid)
	fmt.Printf("  CPU time over %v: %v = %.2f%% of one core (target <= 1%%)\n", elapsed.Round(time.Second), c1-c0,
		100*(c1-c0).Seconds()/elapsed.Seconds())
	fmt.Printf("  CPU time since start, first sweep included: %v\n", c1)
	fmt.Printf("  peak RSS (VmHWM): %.1f MiB (target <= 40 MiB), RSS now %.1f MiB\n", mib(hwm), mib(rss))
	return nil
}
