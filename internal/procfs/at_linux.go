package procfs

import (
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
)

// The calls below read relative to an open directory: the scanner's sweep
// opens the proc root and each /proc/PID/fd once and reads everything
// under them with *at(2) calls and buffers it reuses, which spares the
// kernel a path walk from /proc for every descriptor (most of what lsof
// pays for) and the sweep an allocation per file. FS uses the same calls
// with AT_FDCWD and absolute paths.

// OpenDirAt opens path relative to dirfd as a directory, close-on-exec.
func OpenDirAt(dirfd int, path string) (int, error) {
	return eintr.Retry(func() (int, error) {
		return unix.Openat(dirfd, path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	})
}

// ReadlinkAt reads the target of name in dirfd into buf, growing it when
// the target fills it (readlink(2) truncates silently). The result aliases
// *buf.
func ReadlinkAt(dirfd int, name string, buf *[]byte) ([]byte, error) {
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

// ReadFileAt reads a small pseudo-file relative to dirfd into buf, growing
// it as needed. The result aliases *buf.
func ReadFileAt(dirfd int, name string, buf *[]byte) ([]byte, error) {
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

// EachDirent calls fn with the name of every entry of the open directory
// fd, reading with getdents64(2) into buf. The name slice is only valid
// during the call.
func EachDirent(fd int, buf []byte, fn func(name []byte)) error {
	for {
		n, err := eintr.Retry(func() (int, error) { return unix.Getdents(fd, buf) })
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		ParseDirents(buf[:n], fn)
	}
}

// IDsAt returns the numeric entries (pids, tids or descriptors) of the
// open directory fd. On an error it returns what it read before it.
func IDsAt(fd int, buf []byte) ([]int, error) {
	var ids []int
	err := EachDirent(fd, buf, func(name []byte) {
		if id, ok := ParseID(name); ok {
			ids = append(ids, id)
		}
	})
	return ids, err
}

// LiveThreadAt returns a thread of pid other than its leader, 0 if none;
// pidDir is pid's directory relative to dirfd. A leader that has exited
// (pthread_exit from main) while other threads live on shows an empty
// /proc/PID/fd; the table is still there under task/TID.
func LiveThreadAt(dirfd int, pidDir string, pid int, buf []byte) int {
	d, err := OpenDirAt(dirfd, pidDir+"/task")
	if err != nil {
		return 0
	}
	defer unix.Close(d)
	tid := 0
	_ = EachDirent(d, buf, func(name []byte) {
		if n, ok := ParseID(name); ok && n != pid && tid == 0 {
			tid = n
		}
	})
	return tid
}
