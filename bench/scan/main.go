// Command scan benchmarks the sweep's two backends (/proc and BPF), in
// process and as `relinkd scan`, against lsof +L1 and a find one-liner on
// the same live state: N holder processes with M descriptors each, a
// share of them deleted; then unlink → pin latency with a known and an
// unknown holder on a busy host. Run as root: go run ./bench/scan
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/benchbin"
	"github.com/relinkd/relinkd/pkg/scanner"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/scan:", err)
		os.Exit(1)
	}
}

func run() error {
	sizes := flag.String("sizes", "100x100,500x100,2000x100,200x1000", "states to measure: HOLDERSxDESCRIPTORS, comma-separated")
	pct := flag.Int("deleted", 5, "percent of descriptors whose file is deleted")
	rounds := flag.Int("rounds", 7, "timed rounds per tool (alternating)")
	latState := flag.String("latency", "500x100", "state of the busy host for the unlink → pin trials (HOLDERSxDESCRIPTORS; empty: none)")
	trials := flag.Int("trials", 200, "unlink → pin trials per backend and holder kind")
	bin := flag.String("bin", "", "relinkd binary (default: go build ./cmd/relinkd into a temp dir)")
	flag.Parse()

	dir, err := os.MkdirTemp("", "relinkd-bench-scan-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if *bin == "" {
		if *bin, err = benchbin.Build(dir); err != nil {
			return err
		}
	} else if _, err := os.Stat(*bin); err != nil {
		return fmt.Errorf("-bin %s: %w", *bin, err)
	}
	// One configuration per backend: relinkd scan loads BPF per run, as
	// an operator's would.
	configs := map[string]string{}
	for _, b := range []string{scanner.BackendProc, scanner.BackendBPF} {
		configs[b] = filepath.Join(dir, b+".yaml")
		if err := os.WriteFile(configs[b], []byte("scan:\n  backend: "+b+"\n"), 0o644); err != nil {
			return err
		}
	}
	if name, why := checkBPF(); name != scanner.BackendBPF {
		return fmt.Errorf("the BPF backend does not load here: %s", why)
	}
	fmt.Printf("kernel %s, %d CPUs, load average at start %s\n", kernel(), runtime.NumCPU(), loadavg())
	for _, size := range strings.Split(*sizes, ",") {
		procs, fds, err := parseSize(size)
		if err != nil {
			return err
		}
		if err := measure(dir, *bin, configs, procs, fds, *pct, *rounds); err != nil {
			return err
		}
	}
	if *latState != "" {
		procs, fds, err := parseSize(*latState)
		if err != nil {
			return err
		}
		return latency(dir, procs, fds, *pct, *trials)
	}
	return nil
}

func parseSize(s string) (int, int, error) {
	var procs, fds int
	if _, err := fmt.Sscanf(strings.TrimSpace(s), "%dx%d", &procs, &fds); err != nil || procs <= 0 || fds <= 0 {
		return 0, 0, fmt.Errorf("size %q: want HOLDERSxDESCRIPTORS", s)
	}
	return procs, fds, nil
}

func checkBPF() (string, string) {
	s := scanner.New(scanner.Options{Backend: scanner.BackendBPF}, zap.NewNop())
	defer s.Close()
	return s.Backend()
}

// sample is one timed run: wall and CPU (user + system) time.
type sample struct{ wall, cpu time.Duration }

// measure times every tool on one state, alternating round by round.
func measure(dir, bin string, configs map[string]string, procs, fds, pct, rounds int) error {
	sub := filepath.Join(dir, fmt.Sprintf("s%dx%d", procs, fds))
	if err := os.Mkdir(sub, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(sub)
	holders, err := startHolders(sub, procs, fds, pct)
	defer stopHolders(holders)
	if err != nil {
		return err
	}
	wantDeleted := procs * (fds * pct / 100)

	ctx := context.Background()
	proc := scanner.New(scanner.Options{Backend: scanner.BackendProc}, zap.NewNop())
	bpf := scanner.New(scanner.Options{Backend: scanner.BackendBPF}, zap.NewNop())
	defer bpf.Close()
	// The daemon's full sweeps also feed its holder index (Track) with
	// every descriptor under the watched trees: here all of them.
	bpfTrack := scanner.New(scanner.Options{Backend: scanner.BackendBPF}, zap.NewNop())
	defer bpfTrack.Close()
	procTrack := scanner.New(scanner.Options{Backend: scanner.BackendProc}, zap.NewNop())
	under := []byte(sub + "/")
	keep := func(p []byte) bool { return bytes.HasPrefix(p, under) }
	bpfTrack.Track(keep)
	procTrack.Track(keep)
	inproc := func(s *scanner.Scanner) func() (sample, int, error) {
		return func() (sample, int, error) {
			c0 := cpuSelf()
			start := time.Now()
			res, err := s.Sweep(ctx)
			w := time.Since(start)
			return sample{w, cpuSelf() - c0}, len(res.Candidates), err
		}
	}
	tools := []struct {
		name string
		run  func() (sample, int, error)
	}{
		{"Sweep, /proc backend (in process)", inproc(proc)},
		{"Sweep, BPF backend (in process)", inproc(bpf)},
		{"Sweep + Track, /proc backend", inproc(procTrack)},
		{"Sweep + Track, BPF backend", inproc(bpfTrack)},
		{"relinkd scan --all --json (proc)", cmdRunner(bin, "scan", "--all", "--json", "--config", configs[scanner.BackendProc])},
		{"relinkd scan --all --json (bpf)", cmdRunner(bin, "scan", "--all", "--json", "--config", configs[scanner.BackendBPF])},
		{"lsof +L1 -nP", cmdRunner("lsof", "+L1", "-nP")},
		{"find /proc/[0-9]*/fd -lname '*(deleted)'", cmdRunner("sh", "-c", "find /proc/[0-9]*/fd -lname '*(deleted)' 2>/dev/null")},
	}
	times := make([][]sample, len(tools))
	for r := 0; r < rounds; r++ {
		for i, tool := range tools {
			s, lines, err := tool.run()
			if err != nil {
				return fmt.Errorf("%s: %w", tool.name, err)
			}
			if lines < wantDeleted {
				return fmt.Errorf("%s found %d, want at least %d", tool.name, lines, wantDeleted)
			}
			times[i] = append(times[i], s)
		}
	}
	fmt.Printf("\nstate: %d holders x %d descriptors (%d), %d deleted-but-open files; %d rounds; load average %s\n",
		procs, fds, procs*fds, wantDeleted, rounds, loadavg())
	fmt.Printf("%-45s %10s %10s %10s %10s\n", "tool", "wall", "cpu", "wall/bpf", "cpu/bpf")
	wall := make([]time.Duration, len(tools))
	cpu := make([]time.Duration, len(tools))
	for i := range tools {
		wall[i] = median(times[i], func(s sample) time.Duration { return s.wall })
		cpu[i] = median(times[i], func(s sample) time.Duration { return s.cpu })
	}
	for i, tool := range tools {
		fmt.Printf("%-45s %10s %10s %9.1fx %9.1fx\n", tool.name, round(wall[i]), round(cpu[i]),
			float64(wall[i])/float64(wall[1]), float64(cpu[i])/float64(max(cpu[1], 1)))
	}
	fmt.Printf("targets: lsof/bpf-scan %.1fx (>= 20x), proc/bpf sweep %.1fx (>= 4x), bpf/proc cpu %.2f (<= 0.20); with Track: proc/bpf %.1fx, cpu %.2f\n",
		float64(wall[6])/float64(wall[5]), float64(wall[0])/float64(wall[1]), float64(cpu[1])/float64(max(cpu[0], 1)),
		float64(wall[2])/float64(wall[3]), float64(cpu[3])/float64(max(cpu[2], 1)))
	return nil
}

// cmdRunner runs argv and returns its wall and CPU time and the lines it printed.
func cmdRunner(argv ...string) func() (sample, int, error) {
	return func() (sample, int, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		var out bytes.Buffer
		cmd.Stdout = &out
		start := time.Now()
		err := cmd.Run()
		d := time.Since(start)
		var exit *exec.ExitError
		if errors.As(err, &exit) && !strings.HasSuffix(argv[0], "relinkd") {
			err = nil // lsof and find exit 1 when some process may not be read (pid 1 in a container)
		}
		var c time.Duration
		if cmd.ProcessState != nil {
			c = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		}
		return sample{d, c}, bytes.Count(out.Bytes(), []byte{'\n'}), err
	}
}

// cpuSelf is this process's user + system time so far.
func cpuSelf() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// dieWithUs makes a child get SIGKILL when this program dies (a killed
// benchmark leaves no holders behind; prctl(2) PR_SET_PDEATHSIG, which
// survives the holders' exec of sleep).
var dieWithUs = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

func stopHolders(holders []*exec.Cmd) {
	for _, h := range holders {
		_ = h.Process.Kill()
		_ = h.Wait()
	}
}

// startHolders starts procs bash processes, each holding fds files open,
// pct percent of them deleted, then replacing itself with sleep (which
// inherits the descriptors).
func startHolders(dir string, procs, fds, pct int) ([]*exec.Cmd, error) {
	var holders []*exec.Cmd
	del := fds * pct / 100
	for p := 0; p < procs; p++ {
		var script strings.Builder
		for f := 0; f < fds; f++ {
			name := filepath.Join(dir, fmt.Sprintf("h%d-f%d", p, f))
			if err := os.WriteFile(name, []byte("data\n"), 0o644); err != nil {
				return holders, err
			}
			fmt.Fprintf(&script, "exec %d<'%s'\n", f+3, name)
		}
		for f := 0; f < del; f++ {
			fmt.Fprintf(&script, "rm '%s'\n", filepath.Join(dir, fmt.Sprintf("h%d-f%d", p, f)))
		}
		script.WriteString("echo ready\nexec sleep 100000\n")
		cmd := exec.Command("bash", "-c", script.String())
		cmd.SysProcAttr = dieWithUs
		out, err := cmd.StdoutPipe()
		if err != nil {
			return holders, err
		}
		if err := cmd.Start(); err != nil {
			return holders, err
		}
		holders = append(holders, cmd)
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || line != "ready\n" {
			return holders, fmt.Errorf("holder %d: %q %v", p, line, err)
		}
	}
	return holders, nil
}

func median[T any](xs []T, key func(T) time.Duration) time.Duration {
	ds := make([]time.Duration, len(xs))
	for i, x := range xs {
		ds[i] = key(x)
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func kernel() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return strings.TrimRight(string(u.Release[:]), "\x00")
}
