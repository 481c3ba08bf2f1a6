package scanner

import (
	"fmt"
	"os"
	"strconv"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/procfs"
)

// pickBackend loads the BPF sweep when want asks for it (BackendBPF) or
// allows it (BackendAuto) and it can run here; otherwise, or when it
// cannot be loaded, the /proc sweep serves, for the reason in s.why.
func (s *Scanner) pickBackend(want string) {
	switch want {
	case "", BackendProc:
		s.why = "scan.backend is proc"
		return
	case BackendAuto, BackendBPF:
	default:
		s.why = fmt.Sprintf("unknown backend %q", want)
		s.log.Warn("scan backend: /proc", zap.String("reason", s.why))
		return
	}
	if ns, own, err := s.bpfFits(); err != nil {
		s.why = err.Error()
	} else if b, err := loadBPF(ns, own); err != nil {
		s.why = err.Error()
	} else {
		s.bpf.Store(b)
		s.why = "BPF task_file iterator loaded"
		return
	}
	if want == BackendBPF {
		// Asked for by name: that it cannot be had is worth a warning.
		s.log.Warn("scan backend bpf unavailable, sweeping /proc", zap.String("reason", s.why))
	}
}

// bpfFits tells whether the BPF sweep can serve this proc root, and in
// which pid namespace it must report pids: the kernel's walk sees every
// task, so the proc root must be a procfs (not a fixture tree), whose
// pid namespace, that of its PID 1, the walk translates task ids to
// (tasks that namespace does not show are left out, as /proc leaves them
// out). own tells whether that namespace is ours.
func (s *Scanner) bpfFits() (pidNS uint64, own bool, err error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(s.root, &fs); err != nil {
		return 0, false, fmt.Errorf("statfs %s: %w", s.root, err)
	}
	if fs.Type != unix.PROC_SUPER_MAGIC {
		return 0, false, fmt.Errorf("%s is not a procfs", s.root)
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return 0, false, fmt.Errorf("no kernel BTF: %w", err)
	}
	ours, err := procfs.New("/proc").PIDNS("self")
	if err != nil {
		return 0, false, err
	}
	// A procfs whose "self" is this process shows our namespace; another
	// (a host's /proc mounted into a container) that of its PID 1.
	if self, err := os.Readlink(s.root + "/self"); err == nil && self == strconv.Itoa(os.Getpid()) {
		return ours, true, nil
	}
	if pidNS, err = procfs.New(s.root).PIDNS("1"); err != nil {
		return 0, false, err
	}
	return pidNS, pidNS == ours, nil
}

// warnBPF reports a failed BPF sweep (the /proc sweep then serves that
// call), once until a BPF sweep succeeds again.
func (s *Scanner) warnBPF(err error) {
	if s.failed.CompareAndSwap(false, true) {
		s.log.Warn("bpf sweep failed, sweeping /proc instead", zap.Error(err))
	}
}

// Backend returns the backend sweeps use, BackendBPF or BackendProc, and
// why: what the start-up event and `relinkd doctor` say.
func (s *Scanner) Backend() (name, reason string) {
	if s.bpf.Load() != nil {
		return BackendBPF, s.why
	}
	return BackendProc, s.why
}

// Close releases the BPF programs, if any, once the sweeps that use them
// end; later sweeps read /proc.
func (s *Scanner) Close() error {
	if b := s.bpf.Swap(nil); b != nil {
		return b.Close()
	}
	return nil
}
