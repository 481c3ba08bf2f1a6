package nspawn

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// env is the whole environment of commands run in the container: none of
// the caller's variables (NOTIFY_SOCKET, CI, GOFLAGS …) leak in, and
// systemctl and friends neither page nor colour their output.
var env = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"LANG=C.UTF-8",
	"TERM=dumb",
	"SYSTEMD_PAGER=",
	"SYSTEMD_COLORS=0",
}

// Container is a booted systemd-nspawn container. Its fields are set by
// Boot and not changed after it, except under mu.
type Container struct {
	Dir     string // root directory on the host
	Machine string // machine name (also the container's hostname)

	cmd     *exec.Cmd // systemd-nspawn
	leader  int       // the container's PID 1, in the host's PID namespace
	pidfd   int       // of leader, so Close never signals a reused PID
	cgroups []string  // cgroup directories made for the container
	exited  chan struct{}
	console *syncBuffer

	mu     sync.Mutex
	closed bool
}

// Boot starts systemd-nspawn on dir with systemd as the container's PID 1
// and returns once that PID 1 runs (use WaitBooted to wait for the boot to
// finish). extra are further systemd-nspawn options.
//
// The options are those that work without a systemd on the host:
// --register=no (no systemd-machined) and --keep-unit (no transient scope
// to create); --private-network leaves the container only a loopback
// device, and --console=pipe keeps its console output for Console.
//
// With --keep-unit, systemd-nspawn puts the container into a "payload"
// child of its own cgroup (and itself into "supervisor"). Two containers
// started from the same cgroup would share one payload cgroup, and each
// one's systemd would manage (and kill) the other's processes; so every
// container is started from a cgroup of its own, made here and removed by
// Close, in each hierarchy systemd uses (cgroups(7)).
func Boot(ctx context.Context, dir string, extra ...string) (*Container, error) {
	name, err := machineName()
	if err != nil {
		return nil, err
	}
	c := &Container{Dir: dir, Machine: name, pidfd: -1, exited: make(chan struct{}), console: &syncBuffer{}}
	c.cgroups, err = makeCgroups(name)
	if err != nil {
		c.removeCgroups()
		return nil, err
	}
	args := []string{
		"-D", dir, "--machine=" + name, "--boot",
		"--register=no", "--keep-unit", "--private-network",
		"--console=pipe", "--link-journal=no",
	}
	args = append(args, extra...)
	// The wrapper moves itself into the container's cgroups, then becomes
	// systemd-nspawn, so nspawn starts there and makes its children there.
	script := `for f in $NSPAWN_CGROUP_PROCS; do echo $$ >"$f" || exit 125; done; exec systemd-nspawn "$@"`
	var procs []string
	for _, cg := range c.cgroups {
		procs = append(procs, filepath.Join(cg, "cgroup.procs"))
	}
	c.cmd = exec.Command("sh", append([]string{"-c", script, "sh"}, args...)...)
	c.cmd.Env = append(slices.Clip(env), "NSPAWN_CGROUP_PROCS="+strings.Join(procs, " "))
	c.cmd.Stdout, c.cmd.Stderr = c.console, c.console
	// A test binary killed by its timeout runs no cleanup: the container
	// goes with it (systemd-nspawn kills its payload when it dies). The
	// signal is tied to the creating thread (prctl(2)); Go does not end
	// threads that did not lock themselves, so it fires only at exit.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		c.removeCgroups()
		return nil, fmt.Errorf("nspawn: start systemd-nspawn: %w", err)
	}
	go func() {
		_ = c.cmd.Wait()
		close(c.exited)
	}()
	if err := c.findLeader(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// machineName returns a name no other container of this machine uses:
// systemd-nspawn keys its per-machine state (/run/systemd/nspawn/propagate/NAME)
// by it, and it defaults to the directory's base name.
func machineName() (string, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "relinkd-test-" + hex.EncodeToString(b), nil
}

// findLeader waits for the container's PID 1: the child of systemd-nspawn
// that is PID 1 of a PID namespace of its own (the last NSpid of
// /proc/PID/status is 1, proc(5)) and has become systemd (comm), i.e. has
// finished setting up its mounts and executed init.
func (c *Container) findLeader(ctx context.Context) error {
	nspawn := c.cmd.Process.Pid
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if pid := leaderOf(nspawn); pid > 0 {
			fd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				return fmt.Errorf("nspawn: pidfd_open %d: %w", pid, err)
			}
			// The PID was read before the pidfd was opened: check that it
			// still names the same process.
			if leaderOf(nspawn) == pid {
				c.leader, c.pidfd = pid, fd
				return nil
			}
			unix.Close(fd)
		}
		select {
		case <-c.exited:
			return fmt.Errorf("nspawn: systemd-nspawn exited before the container ran systemd (%v):\n%s",
				c.cmd.ProcessState, c.console.String())
		case <-ctx.Done():
			return fmt.Errorf("nspawn: no container PID 1 after systemd-nspawn started: %w\n%s", ctx.Err(), c.console.String())
		case <-tick.C:
		}
	}
}

// leaderOf returns the PID of parent's child that is a PID namespace's
// init running systemd, or 0.
func leaderOf(parent int) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue // exited meanwhile
		}
		f := statusFields(st)
		ns := strings.Fields(f["NSpid"])
		if f["PPid"] == strconv.Itoa(parent) && len(ns) > 1 && ns[len(ns)-1] == "1" && f["Name"] == "systemd" {
			return pid
		}
	}
	return 0
}

// statusFields parses /proc/PID/status ("Key:\tvalue" lines).
func statusFields(b []byte) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// Console returns what the container has written to its console so far.
func (c *Container) Console() string { return c.console.String() }

// Command returns a command that runs name inside the container: in all
// its namespaces (nsenter(1): mount, UTS, IPC, network, PID, cgroup),
// with the container's root, and a clean environment. It runs in the
// caller's cgroup, not in one of the container's units.
func (c *Container) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{
		"-t", strconv.Itoa(c.leader), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--", name,
	}, args...)...)
	cmd.Env = slices.Clip(env)
	return cmd
}

// ExecError is a command in the container that failed.
type ExecError struct {
	Args   []string
	Stdout string
	Stderr string
	Err    error
}

func (e *ExecError) Error() string {
	msg := fmt.Sprintf("in container: %s: %v", strings.Join(e.Args, " "), e.Err)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

func (e *ExecError) Unwrap() error { return e.Err }

// Exec runs name inside the container and returns its standard output;
// a failure is an *ExecError with both outputs.
func (c *Container) Exec(ctx context.Context, name string, args ...string) (string, error) {
	cmd := c.Command(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), &ExecError{Args: append([]string{name}, args...), Stdout: stdout.String(), Stderr: stderr.String(), Err: err}
	}
	return stdout.String(), nil
}

// WaitBooted waits until the container's systemd has finished booting and
// returns its state: "running", or "degraded" when some unit failed
// (`systemctl --failed` names them). Until systemd listens on its private
// socket, systemctl cannot connect and is tried again.
func (c *Container) WaitBooted(ctx context.Context) (string, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		out, err := c.Exec(ctx, "systemctl", "is-system-running", "--wait")
		state := strings.TrimSpace(out)
		switch state {
		case "running", "degraded":
			return state, nil
		case "maintenance", "stopping":
			return state, fmt.Errorf("nspawn: container %s booted into %q: %v", c.Machine, state, err)
		}
		last = fmt.Sprintf("%q (%v)", state, err)
		select {
		case <-c.exited:
			return "", fmt.Errorf("nspawn: container %s exited while booting (%v):\n%s", c.Machine, c.cmd.ProcessState, c.Console())
		case <-ctx.Done():
			return "", fmt.Errorf("nspawn: container %s did not finish booting: %w; last state %s", c.Machine, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// Close kills the container (SIGKILL to its PID 1 ends its PID namespace,
// every process in it included), waits for systemd-nspawn to exit and
// removes the cgroups Boot made. Calling it again does nothing.
func (c *Container) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	if c.pidfd >= 0 {
		if err := unix.PidfdSendSignal(c.pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("nspawn: kill container PID 1 (%d): %w", c.leader, err))
		}
		unix.Close(c.pidfd)
		c.pidfd = -1
	}
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		// systemd-nspawn is the child of this process: its PID cannot be
		// reused before it is waited for.
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	if err := c.removeCgroups(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// makeCgroups makes a child named name of this process's cgroup in every
// hierarchy that systemd-nspawn places containers in: the unified (v2)
// one, and the named v1 "systemd" one of a legacy or hybrid layout.
func makeCgroups(name string) ([]string, error) {
	own, err := ownCgroups()
	if err != nil {
		return nil, err
	}
	var made []string
	for _, dir := range own {
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			return made, fmt.Errorf("nspawn: make cgroup: %w", err)
		}
		made = append(made, d)
	}
	return made, nil
}

// ownCgroups returns the directories of this process's cgroups in the
// unified hierarchy and the v1 name=systemd one, where mounted.
func ownCgroups() ([]string, error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	return cgroupDirs(mi, cg), nil
}

// cgroupDirs joins the cgroup mounts of mountinfo (proc(5): fields up to
// " - ", then fstype, source and super options) with the paths of
// /proc/self/cgroup ("0::PATH" for v2, "N:name=systemd:PATH").
func cgroupDirs(mountinfo, cgroup []byte) []string {
	var v2, named string
	for _, line := range strings.Split(string(mountinfo), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 || f[3] != "/" {
			continue
		}
		switch {
		case g[0] == "cgroup2" && v2 == "":
			v2 = f[4]
		case g[0] == "cgroup" && named == "" && slices.Contains(strings.Split(g[2], ","), "name=systemd"):
			named = f[4]
		}
	}
	var out []string
	for _, line := range strings.Split(string(cgroup), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "" && v2 != "":
			out = append(out, filepath.Join(v2, parts[2]))
		case parts[1] == "name=systemd" && named != "":
			out = append(out, filepath.Join(named, parts[2]))
		}
	}
	return out
}

// removeCgroups removes the container's cgroups, deepest first: the
// container's systemd leaves its slices and units behind. A cgroup whose
// last process is still exiting cannot be removed yet (EBUSY), so this
// tries again for a few seconds.
func (c *Container) removeCgroups() error {
	var errs []error
	for _, root := range c.cgroups {
		var err error
		for i := 0; i < 100; i++ {
			if err = removeTree(root); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("nspawn: remove cgroup %s: %w", root, err))
		}
	}
	c.cgroups = nil
	return errors.Join(errs...)
}

// removeTree rmdirs every directory under root, then root. Cgroup
// directories hold only kernel files, which go with their directory.
func removeTree(root string) error {
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	return nil
}

// syncBuffer is a bytes.Buffer safe for concurrent writers and readers;
// mu guards b.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
