// Package e2e drives the real relinkd binary against real processes on
// real (loop-mounted) filesystems. TestMain builds the binary once.
package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testproc"
)

// binary is the relinkd built for this run.
var binary string

func TestMain(m *testing.M) {
	if spec := os.Getenv(envContainer); spec != "" {
		containerInit(spec) // TestContainerMode's container: never returns
	}
	if testproc.IsHolder() {
		testproc.Main(m)
		return
	}
	dir, err := os.MkdirTemp("", "relinkd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "relinkd")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/relinkd")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build relinkd:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// plainBinary returns relinkd built without the race detector (which
// multiplies memory use), for tests that measure memory; built once.
var plainBinary = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(filepath.Dir(binary), "relinkd-plain")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/relinkd").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build relinkd without -race: %v\n%s", err, out)
	}
	return bin, nil
})

// Event is one JSON log line of the daemon.
type Event map[string]any

func (e Event) Msg() string { return e.str("msg") }

func (e Event) str(k string) string {
	s, _ := e[k].(string)
	return s
}

func (e Event) num(k string) int64 {
	f, _ := e[k].(float64)
	return int64(f)
}

// Daemon is a running relinkd.
type Daemon struct {
	t      *testing.T
	cmd    *exec.Cmd
	config string

	mu     sync.Mutex
	events []Event
	raw    []string
	notes  []string // sd_notify states received
	wake   chan struct{}
	exited chan struct{}
	err    error
}

// writeConfig writes a configuration file and returns its path.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "relinkd.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// startDaemon runs `relinkd run --config cfg` and waits for READY=1 on a
// notification socket of its own (so sd_notify is exercised too).
func startDaemon(t *testing.T, cfg string, env ...string) *Daemon {
	t.Helper()
	return startDaemonBinary(t, binary, cfg, env...)
}

// startDaemonBinary is startDaemon with another build of relinkd.
func startDaemonBinary(t *testing.T, bin, cfg string, env ...string) *Daemon {
	t.Helper()
	d := &Daemon{t: t, config: cfg, wake: make(chan struct{}), exited: make(chan struct{})}
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			d.mu.Lock()
			d.notes = append(d.notes, strings.Split(strings.TrimSpace(string(buf[:n])), "\n")...)
			d.broadcastLocked()
			d.mu.Unlock()
		}
	}()

	d.cmd = exec.Command(bin, "run", "--config", cfg)
	d.cmd.Env = append(append(os.Environ(), "NOTIFY_SOCKET="+sock), env...)
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go d.read(stderr)
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			_ = d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.exited:
			case <-time.After(10 * time.Second):
				_ = d.cmd.Process.Kill()
				// A thread stuck in a hung filesystem keeps even a
				// killed process from ending until the test's later
				// cleanups (an abort of the FUSE connection) run:
				// waiting for good here would block the whole suite.
				select {
				case <-d.exited:
				case <-time.After(10 * time.Second):
					t.Errorf("the daemon did not end 10 s after SIGKILL (a thread stuck in the kernel?)")
				}
			}
		}
		d.mu.Lock()
		for _, l := range d.raw {
			if strings.Contains(l, "WARNING: DATA RACE") {
				t.Error("the daemon hit a data race")
				break
			}
		}
		d.mu.Unlock()
		if t.Failed() || os.Getenv("E2E_LOG") != "" {
			d.mu.Lock()
			t.Logf("daemon log (%d lines):\n%s", len(d.raw), strings.Join(d.raw, "\n"))
			d.mu.Unlock()
		}
	})
	d.WaitNote("READY=1", 30*time.Second)
	return d
}

func (d *Daemon) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var ev Event
		d.mu.Lock()
		d.raw = append(d.raw, line)
		if json.Unmarshal([]byte(line), &ev) == nil {
			d.events = append(d.events, ev)
		}
		d.broadcastLocked()
		d.mu.Unlock()
	}
	err := d.cmd.Wait()
	d.mu.Lock()
	d.err = err
	d.mu.Unlock()
	close(d.exited)
}

func (d *Daemon) broadcastLocked() {
	close(d.wake)
	d.wake = make(chan struct{})
}

// waitFor waits until cond, evaluated under the lock on every new line or
// note, holds.
func (d *Daemon) waitFor(what string, timeout time.Duration, cond func() bool) {
	d.t.Helper()
	deadline := time.After(timeout)
	for {
		d.mu.Lock()
		ok := cond()
		wake := d.wake
		d.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-wake:
		case <-d.exited:
			d.mu.Lock()
			ok := cond()
			d.mu.Unlock()
			if !ok {
				d.t.Fatalf("daemon exited (%v) while waiting for %s", d.err, what)
			}
			return
		case <-deadline:
			d.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}

// WaitNote waits for an sd_notify state.
func (d *Daemon) WaitNote(state string, timeout time.Duration) {
	d.t.Helper()
	d.waitFor("sd_notify "+state, timeout, func() bool {
		for _, n := range d.notes {
			if n == state {
				return true
			}
		}
		return false
	})
}

// Wait returns the first event (from the start) for which match holds.
func (d *Daemon) Wait(what string, timeout time.Duration, match func(Event) bool) Event {
	d.t.Helper()
	var found Event
	d.waitFor(what, timeout, func() bool {
		for _, e := range d.events {
			if match(e) {
				found = e
				return true
			}
		}
		return false
	})
	return found
}

// WaitCount waits until n events match, and returns them.
func (d *Daemon) WaitCount(what string, n int, timeout time.Duration, match func(Event) bool) []Event {
	d.t.Helper()
	var got []Event
	d.waitFor(fmt.Sprintf("%d × %s", n, what), timeout, func() bool {
		got = got[:0]
		for _, e := range d.events {
			if match(e) {
				got = append(got, e)
			}
		}
		return len(got) >= n
	})
	return got
}

// Events returns the events so far that match.
func (d *Daemon) Events(match func(Event) bool) []Event {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []Event
	for _, e := range d.events {
		if match(e) {
			out = append(out, e)
		}
	}
	return out
}

// Signal sends sig to the daemon.
func (d *Daemon) Signal(sig syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatal(err)
	}
}

// WaitExit waits for the daemon to exit and returns its error.
func (d *Daemon) WaitExit(timeout time.Duration) error {
	d.t.Helper()
	select {
	case <-d.exited:
	case <-time.After(timeout):
		d.t.Fatalf("daemon did not exit within %v", timeout)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// Rescued matches "file rescued" events for path.
func Rescued(path string) func(Event) bool {
	return func(e Event) bool { return e.Msg() == "file rescued" && e.str("path") == path }
}

// About matches any event above debug level whose path field is path.
func About(path string) func(Event) bool {
	return func(e Event) bool { return e.str("level") != "debug" && e.str("path") == path }
}

// Msg matches events by message.
func Msg(msg string) func(Event) bool {
	return func(e Event) bool { return e.Msg() == msg }
}

// shell starts `sh -c script` and waits for it to print "ready".
type Shell struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	done chan struct{}
}

func startShell(t *testing.T, script string, args ...string) *Shell {
	t.Helper()
	return startProg(t, "sh", append([]string{"-c", script, "sh"}, args...)...)
}

// startProg starts a holder program and waits for its "ready" line.
func startProg(t *testing.T, name string, args ...string) *Shell {
	t.Helper()
	cmd := exec.Command(name, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	// Its own process group, so that cleanup also ends its children
	// (tail -f in the background, …).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &Shell{cmd: cmd, in: in, done: make(chan struct{})}
	go func() { cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("%s %q: no ready line: %q %v", name, args, line, err)
	}
	return s
}

func (s *Shell) PID() int { return s.cmd.Process.Pid }

// Wait waits for the holder to exit on its own.
func (s *Shell) Wait(t *testing.T) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(60 * time.Second):
		t.Fatal("holder did not exit")
	}
}

func sha(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func shaBytes(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// regularFiles lists the regular files under root, sidecars excluded.
func regularFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if info.Mode().IsRegular() && !strings.HasSuffix(p, ".relinkd.json") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// mkdirs creates directories.
func mkdirs(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// content is a deterministic payload for name.
func content(name string, n int) []byte {
	var b bytes.Buffer
	for b.Len() < n {
		fmt.Fprintf(&b, "%s line %d\n", name, b.Len())
	}
	return b.Bytes()[:n]
}

// waitOptional is Wait that returns nil on timeout instead of failing.
func (d *Daemon) waitOptional(match func(Event) bool, timeout time.Duration) Event {
	deadline := time.After(timeout)
	for {
		d.mu.Lock()
		for _, e := range d.events {
			if match(e) {
				d.mu.Unlock()
				return e
			}
		}
		wake := d.wake
		d.mu.Unlock()
		select {
		case <-wake:
		case <-deadline:
			return nil
		case <-d.exited:
			return nil
		}
	}
}

// metricValue scrapes the daemon's /metrics at addr and returns the value
// of the unlabelled metric name.
func metricValue(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %q is not a number", name, v)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return 0
}
