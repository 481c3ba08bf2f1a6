package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// layout is where a run keeps its files, all on the filesystem of the
// temp dir, so that a rescue can be a hard link.
type layout struct {
	tree    string // the watched tree (rule paths: tree/**)
	ns      string // container views: ns/bind, ns/tmpfs (rule paths: ns/**)
	rescued string // rescue.dirs
	outside string // the busy host's files outside the watched tree
}

func newLayout(tmp string) (*layout, error) {
	l := &layout{
		tree: filepath.Join(tmp, "w"), ns: filepath.Join(tmp, "ns"),
		rescued: filepath.Join(tmp, "rescued"), outside: filepath.Join(tmp, "busy"),
	}
	for _, d := range []string{l.tree, filepath.Join(l.ns, "bind"), filepath.Join(l.ns, "tmpfs"), l.outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// config writes a configuration that rescues everything in the watched
// tree and the container views, sweeping every interval, following
// growth or not, logging at level, and returns its path. cross_fs lets a file on a container's private tmpfs be copied.
func (l *layout) config(name, interval, level string, follow bool, backend string) (string, error) {
	cfg := filepath.Join(filepath.Dir(l.tree), name)
	if backend != "" {
		backend = ", backend: " + backend
	}
	yaml := fmt.Sprintf(`scan: {interval: %s, events: true%s}
watch:
  - {name: bench, paths: [%q, %q], action: rescue}
rescue:
  dirs: [%q]
  cross_fs: true
  follow: %t
  min_free: 1%%
  max_total_size: 0
  per_user: {max_files: 0, max_bytes: 0}
log: {level: %s}
`, interval, backend, l.tree+"/**", l.ns+"/**", l.rescued, follow, level)
	return cfg, os.WriteFile(cfg, []byte(yaml), 0o644)
}

// busyHost is a host's worth of long-running processes, each holding fds
// files open: fds-inTree outside the watched tree (shared by all of
// them), inTree inside it, of its own: one at the top of the tree (a
// /var/log/syslog) and the others in one of 40 service directories (a
// /var/log/nginx). None is ever deleted; they are the holder index's
// content and the full passes' work.
type busyHost struct {
	l           *layout
	fds, inTree int
	procs       []*exec.Cmd
}

// svcDirs is how many service directories the busy host's in-tree files
// are spread over.
const svcDirs = 40

func (h *busyHost) inTreeFile(p, k int) string {
	if k == 0 {
		return filepath.Join(h.l.tree, fmt.Sprintf("p%d.log", p))
	}
	return filepath.Join(h.l.tree, fmt.Sprintf("svc%02d", p%svcDirs), fmt.Sprintf("p%d-%d.log", p, k))
}

// grow starts processes until there are n. Each is a bash that opens its
// files and then replaces itself with sleep, which inherits them.
func (h *busyHost) grow(n int) error {
	for f := range h.fds - h.inTree {
		name := filepath.Join(h.l.outside, fmt.Sprintf("f%d", f))
		if _, err := os.Stat(name); err == nil {
			continue
		}
		if err := os.WriteFile(name, []byte("data\n"), 0o644); err != nil {
			return err
		}
	}
	for p := len(h.procs); p < n; p++ {
		var script strings.Builder
		fd := 3
		for f := range h.fds - h.inTree {
			// One exec per line: bash keeps descriptors above 9
			// across exec then.
			fmt.Fprintf(&script, "exec %d<'%s'\n", fd, filepath.Join(h.l.outside, fmt.Sprintf("f%d", f)))
			fd++
		}
		for k := range h.inTree {
			name := h.inTreeFile(p, k)
			if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(name, []byte("log\n"), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(&script, "exec %d>>'%s'\n", fd, name)
			fd++
		}
		script.WriteString("echo ready\nexec sleep 100000\n")
		cmd := exec.Command("bash", "-c", script.String())
		cmd.SysProcAttr = dieWithUs
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		h.procs = append(h.procs, cmd)
		if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
			return fmt.Errorf("busy process %d: %q %v", p, line, err)
		}
	}
	return nil
}

// descriptors returns how many descriptors the last process holds, to
// check that the host is what it claims.
func (h *busyHost) descriptors() int {
	if len(h.procs) == 0 {
		return 0
	}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", h.procs[len(h.procs)-1].Process.Pid))
	return len(ents)
}

func (h *busyHost) stop() {
	for _, c := range h.procs {
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	h.procs = nil
}

// oldHolder is a holder started before the daemon: it holds its file
// since then and idles until told to delete it (see holder).
type oldHolder struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	path string
}

func startOld(self, path, delay string) (*oldHolder, error) {
	cmd := exec.Command(self)
	cmd.SysProcAttr = dieWithUs
	cmd.Env = append(os.Environ(), holderEnv+"=old|"+path+"|"+delay)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h := &oldHolder{cmd: cmd, in: in, path: path}
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		h.kill()
		return nil, fmt.Errorf("old holder %s: %q %v", path, line, err)
	}
	return h, nil
}

// release tells the holder to delete its file and linger, and waits for
// its exit.
func (h *oldHolder) release() error {
	if _, err := h.in.Write([]byte{'x'}); err != nil {
		h.kill()
		return fmt.Errorf("old holder %s: %w", h.path, err)
	}
	if err := h.cmd.Wait(); err != nil {
		return fmt.Errorf("old holder %s: %w", h.path, err)
	}
	h.cmd = nil
	return nil
}

func (h *oldHolder) kill() {
	if h.cmd == nil {
		return
	}
	_ = h.cmd.Process.Kill()
	_ = h.cmd.Wait()
	h.cmd = nil
}

// dieWithUs makes a child get SIGKILL when this program dies, so that a
// benchmark stopped halfway (a timeout, ^C) leaves no busy host, holders,
// container or daemon behind to distort the next measurement (prctl(2)
// PR_SET_PDEATHSIG; it survives the busy processes' exec of sleep).
var dieWithUs = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
