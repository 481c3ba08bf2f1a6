package scanner

import (
	"errors"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/procfs"
)

// Thin wrappers over the *at(2) calls the sweep makes. Acting relative to an
// open /proc/PID/fd directory spares the kernel a path walk from /proc for
// every descriptor, which is most of what lsof pays for.

// openDirAt opens path relative to dirfd as a directory, close-on-exec.
func openDirAt(dirfd int, path string) (int, error) {
	return eintr.Retry(func() (int, error) {
		return unix.Openat(dirfd, path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	})
}

// readlinkAt reads the target of name in dirfd into buf, growing it when
// the target fills it (readlink(2) truncates silently).
func readlinkAt(dirfd int, name string, buf *[]byte) ([]byte, error) {
	for {
		n, err := eintr.Retry(func() (int, error) { return unix.Readlinkat(dirfd, name, *buf) })
		if err != nil {
			return nil, err
		}
		if n < len(*buf) {
			return (*buf)[:n], nil
		}
		*buf = make([]byte, 2*len(*buf))
	}
}

// statAt stats what name in dirfd refers to, following the magic link of a
// /proc/PID/fd entry to the open inode itself (no path lookup of the target).
func statAt(dirfd int, name string, flags int) (unix.Stat_t, error) {
	var st unix.Stat_t
	_, err := eintr.Retry(func() (struct{}, error) { return struct{}{}, unix.Fstatat(dirfd, name, &st, flags) })
	return st, err
}

// devIno is a file's identity.
type devIno struct{ dev, ino uint64 }

// rootStat returns the identity of the directory that name, a
// /proc/PID/root magic link relative to dirfd, leads to. AT_STATX_DONT_SYNC
// lets a network or FUSE filesystem answer from its cache (statx(2)): the
// sweep must not wait on a container root that stopped answering.
func rootStat(dirfd int, name string) (devIno, error) {
	var st unix.Statx_t
	err := eintr.Retry0(func() error {
		return unix.Statx(dirfd, name, unix.AT_STATX_DONT_SYNC, unix.STATX_INO, &st)
	})
	if err != nil {
		return devIno{}, err
	}
	return devIno{dev: unix.Mkdev(st.Dev_major, st.Dev_minor), ino: st.Ino}, nil
}

// readFileAt reads a small pseudo-file relative to dirfd into buf.
func readFileAt(dirfd int, name string, buf *[]byte) ([]byte, error) {
	fd, err := eintr.Retry(func() (int, error) {
		return unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	})
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	n := 0
	for {
		if n == len(*buf) {
			grown := make([]byte, 2*len(*buf))
			copy(grown, *buf)
			*buf = grown
		}
		m, err := eintr.Retry(func() (int, error) { return unix.Read(fd, (*buf)[n:]) })
		if err != nil {
			return nil, err
		}
		if m == 0 {
			return (*buf)[:n], nil
		}
		n += m
	}
}

// eachDirent calls fn with the name of every entry of the open directory
// fd, reading with getdents64(2) into buf. The name slice is only valid
// during the call.
func eachDirent(fd int, buf []byte, fn func(name []byte)) error {
	for {
		n, err := eintr.Retry(func() (int, error) { return unix.Getdents(fd, buf) })
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		procfs.ParseDirents(buf[:n], fn)
	}
}

// vanished reports whether err means the process or descriptor went away,
// which is normal during a sweep.
func vanished(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}

// denied reports whether err means the sweep may not look at the process.
func denied(err error) bool {
	return errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM)
}
