package watch

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// The events a directory watch asks for. inotify(7): a watch on a directory
// reports IN_DELETE / IN_MOVED_FROM for a child at unlink or rename time (a
// watch on the file itself would report only IN_ATTRIB then, and
// IN_DELETE_SELF when the last descriptor closes, too late for a rescue).
// IN_CREATE and IN_MOVED_TO with IN_ISDIR let the watch follow new
// subdirectories. IN_MODIFY is deliberately left out: on a busy /var/log it
// would wake the daemon for every line written.
const watchMask = unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_CREATE | unix.IN_MOVED_TO |
	unix.IN_DELETE_SELF | unix.IN_ONLYDIR | unix.IN_DONT_FOLLOW | unix.IN_EXCL_UNLINK

// inotifyInit returns a non-blocking inotify instance as an *os.File, so
// that reads park in the Go poller and Close unblocks them.
func inotifyInit() (*os.File, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, os.NewSyscallError("inotify_init1", err)
	}
	return os.NewFile(uintptr(fd), "inotify"), nil
}

// addWatch adds a watch on dir and returns its descriptor.
func addWatch(f *os.File, dir string) (int, error) {
	var wd int
	var err error
	rc, cerr := f.SyscallConn()
	if cerr != nil {
		return -1, cerr
	}
	if cerr := rc.Control(func(fd uintptr) {
		wd, err = unix.InotifyAddWatch(int(fd), dir, watchMask)
	}); cerr != nil {
		return -1, cerr
	}
	if err != nil {
		return -1, &os.PathError{Op: "inotify_add_watch", Path: dir, Err: err}
	}
	return wd, nil
}

// rmWatch removes watch wd; EINVAL (already gone) is not an error.
func rmWatch(f *os.File, wd int) error {
	var err error
	rc, cerr := f.SyscallConn()
	if cerr != nil {
		return cerr
	}
	if cerr := rc.Control(func(fd uintptr) {
		_, err = unix.InotifyRmWatch(int(fd), uint32(wd))
	}); cerr != nil {
		return cerr
	}
	if err != nil && !errors.Is(err, unix.EINVAL) {
		return os.NewSyscallError("inotify_rm_watch", err)
	}
	return nil
}

// isLimit reports whether err is the kernel refusing more watches:
// ENOSPC when fs.inotify.max_user_watches is reached (inotify_add_watch(2)).
func isLimit(err error) bool { return errors.Is(err, unix.ENOSPC) }

// pseudoFS reports whether dir is on a kernel pseudo filesystem where no
// regular file is ever deleted by a user (procfs, sysfs, cgroup …): walking
// it would only burn watches.
func pseudoFS(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	switch uint32(st.Type) {
	case unix.PROC_SUPER_MAGIC, unix.SYSFS_MAGIC, unix.CGROUP_SUPER_MAGIC, unix.CGROUP2_SUPER_MAGIC,
		unix.DEBUGFS_MAGIC, unix.TRACEFS_MAGIC, unix.DEVPTS_SUPER_MAGIC, unix.SECURITYFS_MAGIC,
		unix.BPF_FS_MAGIC, unix.PSTOREFS_MAGIC, unix.EFIVARFS_MAGIC,
		unix.SELINUX_MAGIC, unix.NSFS_MAGIC, unix.HUGETLBFS_MAGIC:
		return true
	}
	return false
}

// devOf returns the st_dev of dir, without following a final symlink.
func devOf(dir string) (uint64, bool) {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return 0, false
	}
	return st.Dev, true
}
