package policy

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// scratch opens an unnamed scratch file in dir: O_TMPFILE (open(2), Linux
// 3.11, not every filesystem) so nothing is ever left behind, else a named
// file removed at once.
func scratch(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return fd, nil
	}
	f, cerr := os.CreateTemp(dir, ".relinkd-probe-*")
	if cerr != nil {
		return -1, fmt.Errorf("scratch file in %s: %w", dir, cerr)
	}
	defer f.Close()
	_ = os.Remove(f.Name())
	fd, err = unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("scratch file in %s: %w", dir, err)
	}
	return fd, nil
}

// ProbeReflink clones a scratch file into another in dir with FICLONE
// (ioctl_ficlone(2)); nil means reflink works on dir's filesystem. The
// scratch files are unnamed or removed at once: nothing is left behind.
func ProbeReflink(dir string) error {
	src, err := scratch(dir)
	if err != nil {
		return err
	}
	defer unix.Close(src)
	if _, err := unix.Pwrite(src, make([]byte, 64<<10), 0); err != nil {
		return fmt.Errorf("write scratch file in %s: %w", dir, err)
	}
	dst, err := scratch(dir)
	if err != nil {
		return err
	}
	defer unix.Close(dst)
	if err := unix.IoctlFileClone(dst, src); err != nil {
		return fmt.Errorf("FICLONE in %s: %w", dir, err)
	}
	return nil
}

// ProbeTmpFile opens and closes an O_TMPFILE file in dir.
func ProbeTmpFile(dir string) error {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("open O_TMPFILE in %s: %w", dir, err)
	}
	return unix.Close(fd)
}

// ProbePidfd opens a pidfd on this process (pidfd_open(2), Linux 5.3).
func ProbePidfd() error {
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return fmt.Errorf("pidfd_open: %w", err)
	}
	return unix.Close(fd)
}

// Capability is one Linux capability relinkd uses (capabilities(7)).
type Capability struct {
	Name string
	Bit  uint
	Why  string
}

// Capabilities lists the capabilities relinkd needs and why.
func Capabilities() []Capability {
	return []Capability{
		{"CAP_SYS_PTRACE", unix.CAP_SYS_PTRACE, "open other users' /proc/PID/fd/N"},
		{"CAP_DAC_READ_SEARCH", unix.CAP_DAC_READ_SEARCH, "read any file; linkat(AT_EMPTY_PATH)"},
		{"CAP_DAC_OVERRIDE", unix.CAP_DAC_OVERRIDE, "write into any rescue directory"},
		{"CAP_FOWNER", unix.CAP_FOWNER, "carry over mode and timestamps"},
		{"CAP_CHOWN", unix.CAP_CHOWN, "carry over the owner"},
		{"CAP_LEASE", unix.CAP_LEASE, "ask the kernel whether a followed file is still written"},
	}
}
