package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/pkg/scanner"
)

// latency measures unlink → pin as the daemon's event path runs it: the
// directory's inotify IN_DELETE, a sweep (of the holder when it is known,
// of every process when it is not), the candidate of that name, and the
// open of /proc/PID/fd/N that pins it. The host is busy: procs × fds
// holders as in the sweep benchmark, and a shell spinning on one CPU.
func latency(dir string, procs, fds, pct, trials int) error {
	sub := filepath.Join(dir, "latency")
	if err := os.Mkdir(sub, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(sub)
	holders, err := startHolders(sub, procs, fds, pct)
	defer stopHolders(holders)
	if err != nil {
		return err
	}
	spin := exec.Command("sh", "-c", "while :; do :; done")
	spin.SysProcAttr = dieWithUs
	if err := spin.Start(); err != nil {
		return err
	}
	defer func() { _ = spin.Process.Kill(); _ = spin.Wait() }()

	// One holder keeps a file per trial and series open.
	watched := filepath.Join(sub, "watched")
	if err := os.Mkdir(watched, 0o755); err != nil {
		return err
	}
	const series = 4
	n := trials * series
	var script strings.Builder
	for i := 0; i < n; i++ {
		name := filepath.Join(watched, fmt.Sprintf("t%d.log", i))
		if err := os.WriteFile(name, []byte("data\n"), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(&script, "exec %d<'%s'\n", i+3, name)
	}
	script.WriteString("echo ready\nexec sleep 100000\n")
	h := exec.Command("bash", "-c", "ulimit -n 65536\n"+script.String())
	h.SysProcAttr = dieWithUs
	out, err := h.StdoutPipe()
	if err != nil {
		return err
	}
	if err := h.Start(); err != nil {
		return err
	}
	defer func() { _ = h.Process.Kill(); _ = h.Wait() }()
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		return fmt.Errorf("latency holder: %q %v", line, err)
	}
	pid := h.Process.Pid

	in, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(in)
	if _, err := unix.InotifyAddWatch(in, watched, unix.IN_DELETE); err != nil {
		return err
	}
	ctx := context.Background()
	proc := scanner.New(scanner.Options{Backend: scanner.BackendProc}, zap.NewNop())
	bpf := scanner.New(scanner.Options{Backend: scanner.BackendBPF}, zap.NewNop())
	defer bpf.Close()
	type kind struct {
		name  string
		sweep func() (scanner.Result, error)
	}
	kinds := []kind{
		{"known holder, /proc (SweepPIDs)", func() (scanner.Result, error) { return proc.SweepPIDs(ctx, []int{pid}) }},
		{"known holder, BPF (SweepPIDs)", func() (scanner.Result, error) { return bpf.SweepPIDs(ctx, []int{pid}) }},
		{"unknown holder, /proc (Sweep)", func() (scanner.Result, error) { return proc.Sweep(ctx) }},
		{"unknown holder, BPF (Sweep)", func() (scanner.Result, error) { return bpf.Sweep(ctx) }},
	}
	times := make([][]time.Duration, len(kinds))
	ev := make([]byte, 4096)
	for i := 0; i < n; i++ {
		k := i % series
		name := filepath.Join(watched, fmt.Sprintf("t%d.log", i))
		start := time.Now()
		if err := unix.Unlink(name); err != nil {
			return err
		}
		if _, err := unix.Read(in, ev); err != nil {
			return fmt.Errorf("inotify: %w", err)
		}
		res, err := kinds[k].sweep()
		if err != nil {
			return fmt.Errorf("%s: %w", kinds[k].name, err)
		}
		i := slices.IndexFunc(res.Candidates, func(c scanner.Candidate) bool {
			return c.PID == pid && bytes.Equal(c.Path, []byte(name))
		})
		if i < 0 {
			return fmt.Errorf("%s: %s not found", kinds[k].name, name)
		}
		c := res.Candidates[i]
		pin, err := unix.Open(fmt.Sprintf("/proc/%d/fd/%d", pid, c.FD), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("pin: %w", err)
		}
		d := time.Since(start)
		unix.Close(pin)
		times[k] = append(times[k], d)
	}
	fmt.Printf("\nunlink → pin, busy host (%d holders x %d descriptors, one CPU spinning), %d trials each, alternating; load average %s\n",
		procs, fds, trials, loadavg())
	fmt.Printf("%-40s %10s %10s %10s\n", "holder", "median", "p90", "p99")
	for k, kd := range kinds {
		s := slices.Clone(times[k])
		slices.Sort(s)
		fmt.Printf("%-40s %10s %10s %10s\n", kd.name, round(s[len(s)/2]), round(s[len(s)*9/10]), round(s[len(s)*99/100]))
	}
	return nil
}
