package watch

import (
	"errors"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/procfs"
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

// Filesystems whose directories are never watched: their server may stop
// answering (a hung FUSE daemon, a dead NFS server), and a watch is added
// by a path lookup, like the walk that finds the directories, which would
// then never return. inotify only sees the changes made through this host
// on them anyway. Their deleted files are found by the sweeps, which
// bound the calls that touch them (see fsguard).
var serverFS = map[string]bool{
	"fuse": true, "fuseblk": true, "nfs": true, "nfs4": true, "cifs": true, "smb3": true, "smbfs": true,
	"9p": true, "ceph": true, "glusterfs": true, "afs": true, "lustre": true, "gpfs": true, "davfs": true,
}

func isServerFS(fstype string) bool { return serverFS[fstype] || strings.HasPrefix(fstype, "fuse.") }

// mounts is a snapshot of the mount table, read without asking any
// filesystem (proc(5) mountinfo).
type mounts []procfs.Mount

// mountTable is the mount table that decides for a path: the daemon's
// own, or for a path in another namespace's view (PROC/PID/root/…) that
// namespace's, whose mount points are below the view. A container's view
// may have an NFS or FUSE mount where the daemon's own table shows none:
// judged by the daemon's table, a hung server there would stall the
// walk of the view.
type mountTable struct {
	ms   mounts
	view string // the view's prefix, "" for the daemon's own table
	err  error  // the view's table could not be read: treated as a server's
}

// tableFor returns the mount table for path, reading a view's once per
// cache (which may be nil).
func (w *Watcher) tableFor(path string, cache map[string]mountTable) mountTable {
	view := w.viewKey(path)
	if t, ok := cache[view]; ok && cache != nil {
		return t
	}
	var t mountTable
	if view == "" {
		t.ms, _ = w.proc.MountInfo("self")
	} else {
		pidDir := strings.TrimSuffix(strings.TrimPrefix(view, w.proc.Root()+"/"), "/root")
		t.view = view
		t.ms, t.err = w.proc.MountInfo(pidDir)
	}
	if cache != nil {
		cache[view] = t
	}
	return t
}

// onServerFS returns the type of path's mount when it is one of serverFS
// (see mounts.onServerFS), judged in path's own namespace.
func (t mountTable) onServerFS(path string) (string, bool) {
	if t.view == "" {
		return t.ms.onServerFS(path)
	}
	if t.err != nil {
		return "unknown (" + t.err.Error() + ")", true
	}
	rel := strings.TrimPrefix(path, t.view)
	if rel == "" {
		rel = "/"
	}
	return t.ms.onServerFS(rel)
}

// onServerFS returns the type of path's mount when it is one of serverFS:
// the mount point that is the longest prefix of path decides, so that
// nothing below a hung mount is looked up.
func (ms mounts) onServerFS(path string) (string, bool) {
	best := -1
	for i := range ms {
		mp := ms[i].MountPoint
		if (path == mp || mp == "/" || strings.HasPrefix(path, mp+"/")) && (best < 0 || len(mp) > len(ms[best].MountPoint)) {
			best = i
		}
	}
	if best < 0 {
		return "", false
	}
	return ms[best].FSType, isServerFS(ms[best].FSType)
}
