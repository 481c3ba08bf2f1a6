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
	if err := s.bpfFits(); err != nil {
		s.why = err.Error()
	} else if b, err := loadBPF(); err != nil {
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

// bpfFits tells whether the kernel's view of processes is the proc
// root's: the iterator reports pids of the initial pid namespace and
// paths relative to our root, so the proc root must be the procfs of
// that namespace (not a fixture tree, not a container's /proc).
func (s *Scanner) bpfFits() error {
	var fs unix.Statfs_t
	if err := unix.Statfs(s.root, &fs); err != nil {
		return fmt.Errorf("statfs %s: %w", s.root, err)
	}
	if fs.Type != unix.PROC_SUPER_MAGIC {
		return fmt.Errorf("%s is not a procfs", s.root)
	}
	self, err := os.Readlink(s.root + "/self")
	if err != nil || self != strconv.Itoa(os.Getpid()) {
		return fmt.Errorf("%s is not this pid namespace's procfs", s.root)
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return fmt.Errorf("no kernel BTF: %w", err)
	}
	// The kernel's pids are the initial namespace's: ours must be too.
	raw, err := os.ReadFile(s.root + "/self/status")
	if err != nil {
		return fmt.Errorf("read %s/self/status: %w", s.root, err)
	}
	if n := procfs.ParseStatusNSpidDepth(raw); n != 1 {
		return fmt.Errorf("not in the initial pid namespace (NSpid has %d entries)", n)
	}
	return nil
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

// Close releases the BPF programs, if any; the Scanner sweeps /proc
// after. Call it once no sweep runs.
func (s *Scanner) Close() error {
	if b := s.bpf.Swap(nil); b != nil {
		return b.Close()
	}
	return nil
}
