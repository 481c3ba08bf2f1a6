// Package probe asks the kernel what will work here, for relinkd doctor:
// reflink, O_TMPFILE and pidfd_open on this machine, whether a rescue
// root can be written, and the capabilities relinkd uses. Each probe
// leaves nothing behind.
package probe

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/pkg/mounts"
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

// Reflink clones a scratch file into another in dir with FICLONE
// (ioctl_ficlone(2)); nil means reflink works on dir's filesystem. The
// scratch files are unnamed or removed at once: nothing is left behind.
func Reflink(dir string) error {
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

// TmpFile opens and closes an O_TMPFILE file in dir.
func TmpFile(dir string) error {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("open O_TMPFILE in %s: %w", dir, err)
	}
	return unix.Close(fd)
}

// Pidfd opens a pidfd on this process (pidfd_open(2), Linux 5.3).
func Pidfd() error {
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

// RootState says whether relinkd can write into the rescue root root, a
// host path reached through the prefix via (see mounts.Host.Via): exists tells whether root is there yet (it
// is created 0700 at the first rescue otherwise); err is nil when a file
// can be created in root, or in the nearest existing ancestor where root
// would be created, and says why not (read-only, unsafe owner or mode …)
// otherwise. The probe file is unnamed or removed at once.
func RootState(via, root string) (exists bool, err error) {
	d := filepath.Clean(root)
	for {
		var st unix.Stat_t
		err := unix.Lstat(via+d, &st)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.ENOENT) || d == "/" {
			return false, fmt.Errorf("stat %s: %w", d, err)
		}
		d = filepath.Dir(d)
	}
	exists = d == filepath.Clean(root)
	if exists {
		if err := mounts.CheckRoot(via, d); err != nil {
			return true, err
		}
	}
	fd, err := scratch(via + d)
	if err != nil {
		if errors.Is(err, unix.EROFS) {
			return exists, fmt.Errorf("%s is on a read-only filesystem: %w", d, err)
		}
		return exists, fmt.Errorf("cannot create files in %s: %w", d, err)
	}
	unix.Close(fd)
	return exists, nil
}
