package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// daemon is a running relinkd whose log lines are parsed.
type daemon struct {
	cmd     *exec.Cmd
	started time.Time
	ready   time.Duration // start to READY=1 (the first full sweep)
	done    chan struct{} // closed when stderr ends

	// mu guards the fields below.
	mu      sync.Mutex
	backend string            // scan_backend of the start-up event
	rescued map[string]string // path of each "file rescued" → method
	skipped map[string]string // path of each "rescue skipped" → reason
	wake    chan struct{}     // closed and replaced on each of those
}

// startDaemon starts `relinkd run --config cfg` (at nice value o.nice)
// and returns once it has said READY=1 on its NOTIFY_SOCKET, which it does
// after the first full sweep.
func startDaemon(o *options, dir, cfg string, log *lineLog) (*daemon, error) {
	sock := filepath.Join(dir, "notify.sock")
	os.Remove(sock)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	d := &daemon{
		rescued: map[string]string{}, skipped: map[string]string{},
		wake: make(chan struct{}), done: make(chan struct{}),
	}
	d.cmd = exec.Command(o.bin, "run", "--config", cfg)
	if o.nice != 0 {
		// nice(1) before exec: every thread the Go runtime starts
		// inherits it, as under the unit's Nice=.
		d.cmd = exec.Command("nice", "-n", strconv.Itoa(o.nice), o.bin, "run", "--config", cfg)
	}
	d.cmd.SysProcAttr = dieWithUs
	d.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go d.read(stderr, log)
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	buf := make([]byte, 256)
	for {
		n, _, err := conn.ReadFromUnix(buf)
		if err != nil {
			d.stop()
			return nil, fmt.Errorf("no READY=1 from relinkd: %w", err)
		}
		if strings.Contains(string(buf[:n]), "READY=1") {
			d.started, d.ready = start, time.Since(start)
			return d, nil
		}
	}
}

// read parses the daemon's JSON log lines, copying them to log; errors
// and warnings are passed on to our stderr, since they would explain a
// miss.
func (d *daemon) read(r io.Reader, log *lineLog) {
	defer close(d.done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		log.line(sc.Bytes())
		var ev struct {
			Level, Msg, Path, Method, Reason string
			Backend                          string `json:"scan_backend"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		switch {
		case ev.Msg == "relinkd started":
			d.mu.Lock()
			d.backend = ev.Backend
			d.mu.Unlock()
		case ev.Msg == "file rescued":
			d.note(d.rescued, ev.Path, ev.Method)
		case ev.Msg == "rescue skipped":
			d.note(d.skipped, ev.Path, ev.Reason)
		case ev.Level == "warn" || ev.Level == "error":
			fmt.Fprintf(os.Stderr, "  relinkd: %s\n", sc.Bytes())
		}
	}
}

func (d *daemon) note(m map[string]string, path, v string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m[path] = v
	close(d.wake)
	d.wake = make(chan struct{})
}

// scanBackend is the sweep backend the daemon said it runs. Its start-up
// event comes before READY=1 but is read from stderr on another goroutine,
// so it is waited for a moment.
func (d *daemon) scanBackend() string {
	for range 100 {
		d.mu.Lock()
		b := d.backend
		d.mu.Unlock()
		if b != "" {
			return b
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "unknown"
}

// waitFor waits up to timeout for a "file rescued" or "rescue skipped"
// event for path and reports whether one came.
func (d *daemon) waitFor(path string, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		d.mu.Lock()
		_, ok := d.rescued[path]
		_, skip := d.skipped[path]
		wake := d.wake
		d.mu.Unlock()
		if ok || skip {
			return true
		}
		select {
		case <-wake:
		case <-deadline.C:
			return false
		}
	}
}

// outcome returns whether path was rescued and, if it was skipped, why.
func (d *daemon) outcome(path string) (rescued bool, skipped string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, rescued = d.rescued[path]
	return rescued, d.skipped[path]
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

func (d *daemon) stop() {
	_ = d.cmd.Process.Signal(unix.SIGTERM)
	<-d.done
	_ = d.cmd.Wait()
}

// userHZ is USER_HZ, the unit of the times in /proc/PID/stat
// (sysconf(_SC_CLK_TCK) is 100 on Linux).
const userHZ = 100

// cpuTime returns utime+stime of pid (proc(5) stat fields 14 and 15).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(u+st) * time.Second / userHZ, nil
}

// memKiB returns VmHWM and VmRSS of pid (proc(5) status).
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

func mib(kib uint64) float64 { return float64(kib) / 1024 }
