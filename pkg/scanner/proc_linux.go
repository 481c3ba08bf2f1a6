package scanner

import (
	"errors"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
)

// Thin wrappers over the *at(2) calls the sweep makes. Acting relative to an
// open /proc/PID/fd directory spares the kernel a path walk from /proc for
// every descriptor, which is most of what lsof pays for.

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

// vanished reports whether err means the process or descriptor went away,
// which is normal during a sweep.
func vanished(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}

// denied reports whether err means the sweep may not look at the process.
func denied(err error) bool {
	return errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM)
}
