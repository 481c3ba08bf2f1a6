package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	flag "github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/pkg/policy"
)

// hostFlags are --host-root and --proc: where a command finds the host's
// root and its processes. Container mode (--host-root DIR) is relinkd in
// a container with the host's "/" mounted at DIR and the host's processes
// under its proc root: DIR/proc when the host's /proc is mounted there
// (a recursive bind of "/"), else /proc, which with the host's PID
// namespace (Kubernetes' hostPID) lists the host's processes.
type hostFlags struct {
	root, proc string
}

func (h *hostFlags) add(fl *flag.FlagSet) {
	fl.StringVar(&h.root, "host-root", "", "container mode: the host's root is mounted at `DIR` (its /proc at DIR/proc, or hostPID)")
	fl.StringVar(&h.proc, "proc", "/proc", "procfs mount `point` (with --host-root: DIR/proc if mounted there, else /proc)")
}

// hostMode is what hostFlags resolve to.
type hostMode struct {
	procRoot string
	hostRoot string // "" outside container mode
}

// policyOptions are the policy's options for this mode.
func (m hostMode) policyOptions() []policy.Option {
	return []policy.Option{policy.WithProcRoot(m.procRoot), policy.WithHostRoot(m.hostRoot)}
}

// resolve checks the flags fl parsed. In container mode the proc root
// must list the host's processes with the pids of relinkd's own PID
// namespace (pins, pidfds and signals use them), and its PID 1 must be
// in a mount namespace other than relinkd's (else these are the
// container's own processes, not the host's).
func (h *hostFlags) resolve(fl *flag.FlagSet) (hostMode, error) {
	m := hostMode{procRoot: h.proc}
	if h.root == "" {
		return m, nil
	}
	if !filepath.IsAbs(h.root) {
		return m, fmt.Errorf("%w: --host-root %q: not an absolute path", errUsage, h.root)
	}
	root := filepath.Clean(h.root)
	if st, err := os.Stat(root); err != nil {
		return m, fmt.Errorf("--host-root: %w", err)
	} else if !st.IsDir() {
		return m, fmt.Errorf("--host-root %s: not a directory", root)
	}
	if root == "/" {
		return m, nil
	}
	m.hostRoot = root
	if !fl.Changed("proc") {
		m.procRoot = "/proc"
		if isProc(filepath.Join(root, "proc")) {
			m.procRoot = filepath.Join(root, "proc")
		}
	}
	if !isProc(m.procRoot) {
		return m, fmt.Errorf("--host-root %s: %s is not a procfs mount", root, m.procRoot)
	}
	self, err := os.Readlink(filepath.Join(m.procRoot, "self"))
	if err != nil {
		return m, fmt.Errorf("--host-root %s: %w", root, err)
	}
	if self != strconv.Itoa(os.Getpid()) {
		return m, fmt.Errorf("--host-root %s: the processes under %s are not in relinkd's PID namespace (relinkd is pid %s there, %d here): run it in the host's PID namespace (hostPID)",
			root, m.procRoot, self, os.Getpid())
	}
	proc := procfs.New(m.procRoot)
	own, err := proc.MountNS("self")
	if err != nil {
		return m, fmt.Errorf("--host-root %s: %w", root, err)
	}
	init, err := proc.MountNS("1")
	if err != nil {
		return m, fmt.Errorf("--host-root %s: the host's PID 1 under %s: %w", root, m.procRoot, err)
	}
	if init == own {
		return m, fmt.Errorf("--host-root %s: PID 1 under %s shares relinkd's mount namespace: these are not the host's processes (run in the host's PID namespace, hostPID), or relinkd is not in a container (drop --host-root)",
			root, m.procRoot)
	}
	return m, nil
}

// isProc reports whether dir is the root of a procfs mount (statfs(2)).
func isProc(dir string) bool {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil || st.Type != unix.PROC_SUPER_MAGIC {
		return false
	}
	_, err := os.Lstat(filepath.Join(dir, "self"))
	return err == nil
}
