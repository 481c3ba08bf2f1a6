package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
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
// holders as in the sweep benchmark; each trial's holder has fds
// descriptors too, one of them the deleted file.
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
	// One holder per series, with fds descriptors like the busy host's;
	// before each trial it closes the previous trial's file and opens the
	// next (told over its stdin), so that it holds one deleted file when
	// the sweep looks.
	watched := filepath.Join(sub, "watched")
	if err := os.Mkdir(watched, 0o755); err != nil {
		return err
	}
	const series = 5
	type holder struct {
		pid int
		in  io.Writer
		out *bufio.Reader
	}
	var hs []holder
	for k := 0; k < series; k++ {
		var script strings.Builder
		for i := 1; i < fds; i++ {
			name := filepath.Join(sub, fmt.Sprintf("other-%d-%d", k, i))
			if err := os.WriteFile(name, []byte("data\n"), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(&script, "exec %d<'%s'\n", i+9, name)
		}
		script.WriteString(`echo ready
while read -r cmd arg; do
  case $cmd in
    open) exec {t}<"$arg"; echo ok ;;
    close) exec {t}<&-; echo ok ;;
  esac
done
`)
		h := exec.Command("bash", "-c", script.String())
		h.SysProcAttr = dieWithUs
		in, err := h.StdinPipe()
		if err != nil {
			return err
		}
		out, err := h.StdoutPipe()
		if err != nil {
			return err
		}
		if err := h.Start(); err != nil {
			return err
		}
		defer func() { in.Close(); _ = h.Process.Kill(); _ = h.Wait() }()
		r := bufio.NewReader(out)
		if line, err := r.ReadString('\n'); err != nil || line != "ready\n" {
			return fmt.Errorf("latency holder: %q %v", line, err)
		}
		hs = append(hs, holder{h.Process.Pid, in, r})
	}
	tell := func(h holder, cmd string) error {
		if _, err := fmt.Fprintln(h.in, cmd); err != nil {
			return err
		}
		if line, err := h.out.ReadString('\n'); err != nil || line != "ok\n" {
			return fmt.Errorf("latency holder %d: %s: %q %v", h.pid, cmd, line, err)
		}
		return nil
	}
	n := trials * series

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
		sweep func(pid int) (scanner.Result, error)
	}
	// The daemon's holder index knows which descriptors a known holder
	// had in the directory at its last look: the first look after the
	// unlink reads those alone (SweepFDs). The look is taken here before
	// each such trial's unlink, untimed, with the index's Track.
	indexed := scanner.New(scanner.Options{Backend: scanner.BackendProc}, zap.NewNop())
	indexed.Track(func(path []byte) bool { return bytes.HasPrefix(path, []byte(watched+"/")) })
	var lastLook []scanner.Target
	kinds := []kind{
		{"known holder, indexed descriptors (SweepFDs)", func(int) (scanner.Result, error) { return indexed.SweepFDs(ctx, lastLook) }},
		{"known holder, /proc (SweepPIDs)", func(pid int) (scanner.Result, error) { return proc.SweepPIDs(ctx, []int{pid}) }},
		{"known holder, BPF (SweepPIDs)", func(pid int) (scanner.Result, error) { return bpf.SweepPIDs(ctx, []int{pid}) }},
		{"unknown holder, /proc (Sweep)", func(int) (scanner.Result, error) { return proc.Sweep(ctx) }},
		{"unknown holder, BPF (Sweep)", func(int) (scanner.Result, error) { return bpf.Sweep(ctx) }},
	}
	// Each trial's time, and its parts: unlink → the inotify event read,
	// the sweep, the pin's open.
	times := make([][]time.Duration, len(kinds))
	woke := make([][]time.Duration, len(kinds))
	swept := make([][]time.Duration, len(kinds))
	ev := make([]byte, 4096)
	for i := 0; i < n; i++ {
		k := i % series
		pid := hs[k].pid
		name := filepath.Join(watched, fmt.Sprintf("t%d.log", i))
		if err := os.WriteFile(name, []byte("data\n"), 0o644); err != nil {
			return err
		}
		if i >= series {
			if err := tell(hs[k], "close"); err != nil {
				return err
			}
		}
		if err := tell(hs[k], "open "+name); err != nil {
			return err
		}
		if k == 0 {
			look, err := indexed.SweepPIDs(ctx, []int{pid})
			if err != nil {
				return err
			}
			lastLook = lastLook[:0]
			for _, h := range look.Held {
				if h.Dir == watched {
					lastLook = append(lastLook, scanner.Target{PID: h.PID, FDs: h.FDs})
				}
			}
		}
		start := time.Now()
		if err := unix.Unlink(name); err != nil {
			return err
		}
		if _, err := unix.Read(in, ev); err != nil {
			return fmt.Errorf("inotify: %w", err)
		}
		evAt := time.Now()
		res, err := kinds[k].sweep(pid)
		sweptAt := time.Now()
		if err != nil {
			return fmt.Errorf("%s: %w", kinds[k].name, err)
		}
		j := slices.IndexFunc(res.Candidates, func(c scanner.Candidate) bool {
			return c.PID == pid && bytes.Equal(c.Path, []byte(name))
		})
		if j < 0 {
			return fmt.Errorf("%s: %s not found", kinds[k].name, name)
		}
		c := res.Candidates[j]
		pin, err := unix.Open(fmt.Sprintf("/proc/%d/fd/%d", pid, c.FD), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("pin: %w", err)
		}
		d := time.Since(start)
		unix.Close(pin)
		times[k] = append(times[k], d)
		woke[k] = append(woke[k], evAt.Sub(start))
		swept[k] = append(swept[k], sweptAt.Sub(evAt))
	}
	fmt.Printf("\nunlink → pin, busy host (%d holders x %d descriptors; each trial's holder has %d, one of them deleted), %d trials each, alternating; load average %s\n",
		procs, fds, fds, trials, loadavg())
	fmt.Printf("%-40s %10s %10s %10s %14s %14s\n", "holder", "median", "p90", "p99", "event, median", "sweep, median")
	median := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	for k, kd := range kinds {
		s := slices.Clone(times[k])
		slices.Sort(s)
		fmt.Printf("%-40s %10s %10s %10s %14s %14s\n", kd.name, round(s[len(s)/2]), round(s[len(s)*9/10]), round(s[len(s)*99/100]),
			round(median(woke[k])), round(median(swept[k])))
	}
	fmt.Println("(event: from the unlink to the inotify event read; sweep: the sweep call; the rest is the pin's open)")
	return nil
}
