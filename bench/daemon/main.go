// Command daemon benchmarks `relinkd run`:
//
//   - race window: holders that create a file, delete it and exit 2, 5 or
//     20 ms later; the share rescued (sweeps an hour apart, so only the
//     directory-event path can catch them);
//   - idle cost: CPU time and peak RSS of the daemon over 60 s with the
//     default configuration on a host with 500 processes × 100 open files.
//
// Run as root from the repository root: go run ./bench/daemon
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/relinkd/relinkd/internal/benchbin"
)

const holderEnv = "RELINKD_BENCH_HOLDER"

func main() {
	if spec, ok := os.LookupEnv(holderEnv); ok {
		os.Exit(holder(spec))
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/daemon:", err)
		os.Exit(1)
	}
}

// holder creates PATH, writes 4 KiB, deletes it, lingers, exits.
func holder(spec string) int {
	path, ms, _ := strings.Cut(spec, "|")
	linger, _ := time.ParseDuration(ms)
	fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CREAT|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	buf := []byte(strings.Repeat("relinkd race window\n", 205))[:4096]
	if _, err := syscall.Write(fd, buf); err != nil {
		return 1
	}
	if err := syscall.Unlink(path); err != nil {
		return 1
	}
	time.Sleep(linger)
	return 0 // exit closes fd
}

func run() error {
	trials := flag.Int("trials", 100, "race-window trials per delay")
	delays := flag.String("delays", "2ms,5ms,20ms", "holder lifetimes after the unlink")
	idle := flag.Duration("idle", 60*time.Second, "idle measurement window (0 skips)")
	procs := flag.Int("procs", 500, "idle: holder processes")
	fds := flag.Int("fds", 100, "idle: open files per holder")
	bin := flag.String("bin", "", "relinkd binary (default: go build ./cmd/relinkd into a temp dir)")
	flag.Parse()
	if os.Geteuid() != 0 {
		return errors.New("run as root (the daemon reads other processes' descriptors)")
	}
	tmp, err := os.MkdirTemp("", "relinkd-bench-daemon-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if *bin == "" {
		if *bin, err = benchbin.Build(tmp); err != nil {
			return err
		}
	}
	if *trials > 0 {
		if err := raceWindow(*bin, tmp, *trials, *delays); err != nil {
			return err
		}
	}
	if *idle > 0 {
		if err := idleCost(*bin, tmp, *idle, *procs, *fds); err != nil {
			return err
		}
	}
	return nil
}

// daemon is a running relinkd whose log lines are parsed.
type daemon struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	seen map[string]bool // path of each "file rescued"
	wake chan struct{}
}

func startDaemon(bin, dir string, args ...string) (*daemon, error) {
	sock := filepath.Join(dir, "notify.sock")
	os.Remove(sock)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	d := &daemon{seen: map[string]bool{}, wake: make(chan struct{})}
	d.cmd = exec.Command(bin, append([]string{"run"}, args...)...)
	d.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go d.read(stderr)
	// READY=1 comes after the first full sweep.
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	buf := make([]byte, 256)
	for {
		n, _, err := conn.ReadFromUnix(buf)
		if err != nil {
			d.stop()
			return nil, fmt.Errorf("no READY=1 from relinkd: %w", err)
		}
		if strings.Contains(string(buf[:n]), "READY=1") {
			return d, nil
		}
	}
}

func (d *daemon) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct {
			Msg, Path string
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		if ev.Msg == "file rescued" {
			d.mu.Lock()
			d.seen[ev.Path] = true
			close(d.wake)
			d.wake = make(chan struct{})
			d.mu.Unlock()
		}
	}
}

// rescued waits up to timeout for a "file rescued" event for path.
func (d *daemon) rescued(path string, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for {
		d.mu.Lock()
		ok, wake := d.seen[path], d.wake
		d.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-wake:
		case <-deadline:
			return false
		}
	}
}

func (d *daemon) stop() {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	_ = d.cmd.Wait()
}

func raceWindow(bin, tmp string, trials int, delays string) error {
	watched, rescued := filepath.Join(tmp, "w"), filepath.Join(tmp, "rescued")
	if err := os.MkdirAll(watched, 0o755); err != nil {
		return err
	}
	cfg := filepath.Join(tmp, "race.yaml")
	yaml := fmt.Sprintf(`scan: {interval: 1h, events: true}
watch:
  - {name: bench, paths: [%q], action: rescue}
rescue:
  dirs: [%q]
  min_free: 1%%
  max_total_size: 0
  per_user: {max_files: 0, max_bytes: 0}
`, watched+"/**", rescued)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		return err
	}
	d, err := startDaemon(bin, tmp, "--config", cfg)
	if err != nil {
		return err
	}
	defer d.stop()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	fmt.Printf("race window: %d trials per delay, sweeps 1h apart (event path only)\n", trials)
	for _, ds := range strings.Split(delays, ",") {
		delay, err := time.ParseDuration(ds)
		if err != nil {
			return err
		}
		ok := 0
		for i := range trials {
			path := filepath.Join(watched, fmt.Sprintf("t%s-%d.log", ds, i))
			h := exec.Command(self)
			h.Env = append(os.Environ(), holderEnv+"="+path+"|"+ds)
			h.Stderr = os.Stderr
			if err := h.Run(); err != nil {
				return fmt.Errorf("holder: %w", err)
			}
			if d.rescued(path, 2*time.Second) {
				ok++
			}
		}
		fmt.Printf("  exit %5s after unlink: %3d/%d rescued (%.1f%%)\n", delay, ok, trials, 100*float64(ok)/float64(trials))
	}
	return nil
}

func idleCost(bin, tmp string, window time.Duration, procs, fds int) error {
	dir := filepath.Join(tmp, "idle")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	fmt.Printf("idle cost: %d processes x %d open files, default configuration, %v\n", procs, fds, window)
	var holders []*exec.Cmd
	defer func() {
		for _, h := range holders {
			_ = h.Process.Kill()
			_ = h.Wait()
		}
	}()
	for p := range procs {
		var script strings.Builder
		for f := range fds {
			name := filepath.Join(dir, fmt.Sprintf("h%d-f%d", p, f))
			if p == 0 {
				if err := os.WriteFile(name, []byte("data\n"), 0o644); err != nil {
					return err
				}
			}
			// One exec per line: bash keeps descriptors above 9 across
			// exec then.
			fmt.Fprintf(&script, "exec %d<'%s'\n", f+3, filepath.Join(dir, fmt.Sprintf("h0-f%d", f)))
		}
		script.WriteString("echo ready\nexec sleep 100000\n")
		cmd := exec.Command("bash", "-c", script.String())
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		holders = append(holders, cmd)
		if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
			return fmt.Errorf("holder %d: %q %v", p, line, err)
		}
	}
	// Check what the holders really hold.
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", holders[len(holders)-1].Process.Pid))
	fmt.Printf("  last holder has %d descriptors open\n", len(ents))

	start := time.Now()
	d, err := startDaemon(bin, tmp, "--config", "configs/relinkd.yaml")
	if err != nil {
		return err
	}
	defer d.stop()
	fmt.Printf("  start-up to READY=1 (first full sweep): %v\n", time.Since(start).Round(time.Millisecond))
	pid := d.cmd.Process.Pid
	c0, err := cpuTicks(pid)
	if err != nil {
		return err
	}
	t0 := time.Now()
	time.Sleep(window)
	c1, err := cpuTicks(pid)
	if err != nil {
		return err
	}
	elapsed := time.Since(t0)
	const hz = 100 // USER_HZ, sysconf(_SC_CLK_TCK) on Linux
	cpu := time.Duration(c1-c0) * time.Second / hz
	hwm, rss := memKiB(pid)
	fmt.Printf("  CPU time over %v: %v = %.3f%% of one core\n", elapsed.Round(time.Second), cpu,
		100*cpu.Seconds()/elapsed.Seconds())
	if total, err := cpuTicks(pid); err == nil {
		fmt.Printf("  CPU time since start, first sweep included: %v\n", time.Duration(total)*time.Second/hz)
	}
	fmt.Printf("  peak RSS (VmHWM): %.1f MiB, RSS now %.1f MiB\n", float64(hwm)/1024, float64(rss)/1024)
	return nil
}

// cpuTicks returns utime+stime of pid (proc(5) stat fields 14 and 15).
func cpuTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return u + st, nil
}

// memKiB returns VmHWM and VmRSS of pid.
func memKiB(pid int) (hwm, rss uint64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmHWM":
			hwm = n
		case "VmRSS":
			rss = n
		}
	}
	return hwm, rss
}
