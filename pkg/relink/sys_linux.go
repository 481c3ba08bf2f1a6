package relink

import (
	"errors"
	"fmt"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
)

// This file holds the thin syscall wrappers; everything above them is plain Go.
// Every descriptor is opened close-on-exec and EINTR is retried.

// openat2Beneath opens the directory name below dirfd with openat2(2),
// refusing any symlink or magic link on the way (ELOOP) and any escape
// from dirfd (EXDEV). O_NOFOLLOW is redundant with RESOLVE_NO_SYMLINKS but
// costs nothing.
func openat2Beneath(dirfd int, name string) (int, error) {
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	return eintr.Retry(func() (int, error) { return unix.Openat2(dirfd, name, &how) })
}

// openatNoFollow opens the directory name in dirfd with openat(2) without
// following a symlink in its place (O_NOFOLLOW: ELOOP, or ENOTDIR with
// O_DIRECTORY). It is the fallback where openat2 is refused; the caller
// passes one path component at a time, so nothing else needs resolving.
func openatNoFollow(dirfd int, name string) (int, error) {
	return eintr.Retry(func() (int, error) {
		return unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	})
}

// ProbeOpenat2 reports whether openat2(2) with RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS works for this process. It fails with ENOSYS on
// kernels before 5.6 and under seccomp filters that cannot inspect its
// struct open_how (systemd's RestrictSUIDSGID=yes, some container
// runtimes' defaults), which answer ENOSYS or EPERM.
func ProbeOpenat2() error {
	fd, err := openat2Beneath(unix.AT_FDCWD, ".")
	if err != nil {
		return fmt.Errorf("openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS: %w", err)
	}
	unix.Close(fd)
	return nil
}

// openDir opens a trusted absolute directory path the ordinary way.
func openDir(path string) (int, error) {
	return eintr.Retry(func() (int, error) {
		return unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	})
}

// openPin re-opens the inode behind a magic link /proc/PID/fd/N: a new open
// file description of the same inode (proc(5)). O_NONBLOCK and O_NOCTTY
// make sure a descriptor swapped for a FIFO or a tty between our fstatat
// and this open can neither block nor become our terminal. O_NOATIME keeps
// the source's atime as it is; it needs ownership or CAP_FOWNER, so EPERM
// retries without it.
func openPin(path string) (int, error) {
	flags := unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK
	fd, err := eintr.Retry(func() (int, error) { return unix.Open(path, flags|unix.O_NOATIME, 0) })
	if errors.Is(err, unix.EPERM) {
		fd, err = eintr.Retry(func() (int, error) { return unix.Open(path, flags, 0) })
	}
	return fd, err
}

// openTmpfile creates an unnamed regular file in dirfd, mode 0600. Without
// O_EXCL it can later be given a name with linkat(2) (open(2), O_TMPFILE).
// O_NOATIME (we own the new file) keeps reading it back for the hash from
// moving the atime carried over from the source.
func openTmpfile(dirfd int) (int, error) {
	return eintr.Retry(func() (int, error) {
		return unix.Openat(dirfd, ".", unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC|unix.O_NOATIME, 0o600)
	})
}

// createExcl creates name in dirfd, mode 0600; O_EXCL never follows a
// symlink (open(2)).
func createExcl(dirfd int, name string) (int, error) {
	return eintr.Retry(func() (int, error) {
		return unix.Openat(dirfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOATIME, 0o600)
	})
}

// linkFD gives the inode open as fd the name dirfd/name. linkat(2) with
// AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH on older kernels and answers ENOENT
// without it, so ENOENT and EPERM retry through /proc/self/fd/N with
// AT_SYMLINK_FOLLOW, which needs no capability. An inode with no links
// (and not an O_TMPFILE) is refused with ENOENT by both (vfs_link).
func linkFD(procRoot string, fd, dirfd int, name string) error {
	err := eintr.Retry0(func() error { return unix.Linkat(fd, "", dirfd, name, unix.AT_EMPTY_PATH) })
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPERM) {
		self := procRoot + "/self/fd/" + strconv.Itoa(fd)
		err = eintr.Retry0(func() error { return unix.Linkat(unix.AT_FDCWD, self, dirfd, name, unix.AT_SYMLINK_FOLLOW) })
	}
	return err
}

// renameNoReplace renames within dirfd without ever replacing (rename(2),
// RENAME_NOREPLACE).
func renameNoReplace(dirfd int, from, to string) error {
	return eintr.Retry0(func() error { return unix.Renameat2(dirfd, from, dirfd, to, unix.RENAME_NOREPLACE) })
}

// ficlone shares all of src's extents with dst (ioctl_ficlone(2)).
func ficlone(dst, src int) error {
	return eintr.Retry0(func() error { return unix.IoctlFileClone(dst, src) })
}

// ficloneRange shares src's extents from off to EOF with dst at the same
// offset. off must be a multiple of the filesystem block size.
func ficloneRange(dst, src int, off int64) error {
	r := unix.FileCloneRange{Src_fd: int64(src), Src_offset: uint64(off), Src_length: 0, Dest_offset: uint64(off)}
	return eintr.Retry0(func() error { return unix.IoctlFileCloneRange(dst, &r) })
}

// copyRange copies up to n bytes at off from src to the same offset in dst
// in the kernel (copy_file_range(2)); it returns 0 at the source's EOF.
func copyRange(dst, src int, off int64, n int) (int, error) {
	in, out := off, off
	return eintr.Retry(func() (int, error) { return unix.CopyFileRange(src, &in, dst, &out, n, 0) })
}

// seekData and seekHole find the next data or hole at or after off
// (lseek(2)); seekData answers ENXIO when only a hole is left up to EOF.
func seekData(fd int, off int64) (int64, error) {
	return eintr.Retry(func() (int64, error) { return unix.Seek(fd, off, unix.SEEK_DATA) })
}

func seekHole(fd int, off int64) (int64, error) {
	return eintr.Retry(func() (int64, error) { return unix.Seek(fd, off, unix.SEEK_HOLE) })
}

func fstat(fd int) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := eintr.Retry0(func() error { return unix.Fstat(fd, &st) })
	return st, err
}

// futimens sets fd's atime and mtime (utimensat(2) with a NULL path).
func futimens(fd int, atime, mtime unix.Timespec) error {
	ts := [2]unix.Timespec{atime, mtime}
	return eintr.Retry0(func() error {
		_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
		if e != 0 {
			return e
		}
		return nil
	})
}

// freeBytes is the space available to an unprivileged writer on fd's
// filesystem (statfs(2) f_bavail); root may dip into the reserve, but the
// guard must not count on it.
func freeBytes(fd int) (uint64, error) {
	var s unix.Statfs_t
	if err := eintr.Retry0(func() error { return unix.Fstatfs(fd, &s) }); err != nil {
		return 0, err
	}
	return s.Bavail * uint64(s.Bsize), nil
}

// xattrNames lists fd's extended attribute names (flistxattr(2)).
func xattrNames(fd int) ([]string, error) {
	buf := make([]byte, 1024)
	for {
		n, err := eintr.Retry(func() (int, error) { return unix.Flistxattr(fd, buf) })
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		if err != nil {
			return nil, err
		}
		var names []string
		for _, b := range splitNUL(buf[:n]) {
			names = append(names, string(b))
		}
		return names, nil
	}
}

// xattrValue reads one extended attribute of fd (fgetxattr(2)).
func xattrValue(fd int, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := eintr.Retry(func() (int, error) { return unix.Fgetxattr(fd, name, buf) })
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

func splitNUL(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		i := 0
		for i < len(b) && b[i] != 0 {
			i++
		}
		if i > 0 {
			out = append(out, b[:i])
		}
		if i == len(b) {
			break
		}
		b = b[i+1:]
	}
	return out
}

// preallocate reserves the blocks of [off, off+n) of fd without changing
// its size (fallocate(2), FALLOC_FL_KEEP_SIZE).
func preallocate(fd int, off, n int64) error {
	return eintr.Retry0(func() error { return unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, off, n) })
}

// startWriteback starts writing the n bytes at off of fd to disk without
// waiting (sync_file_range(2) with SYNC_FILE_RANGE_WRITE). A rescue ends
// with fsync; starting writeback chunk by chunk overlaps the disk writes
// with the rest of the copy instead of doing them all at the end, and
// keeps a large copy from piling up dirty pages. It is only a hint: errors
// are ignored, and fsync still decides durability.
func startWriteback(fd int, off, n int64) {
	_ = unix.SyncFileRange(fd, off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// birthTime is the birth time of the file open as fd (statx(2)
// STATX_BTIME), in ns since the epoch; 0 where its filesystem records
// none.
func birthTime(fd int) (int64, error) {
	var stx unix.Statx_t
	err := eintr.Retry0(func() error {
		return unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_SYNC_AS_STAT, unix.STATX_BTIME, &stx)
	})
	if err != nil {
		return 0, err
	}
	if stx.Mask&unix.STATX_BTIME == 0 {
		return 0, nil
	}
	return stx.Btime.Sec*1_000_000_000 + int64(stx.Btime.Nsec), nil
}

// openFileNoFollow opens the regular file name in dirfd for reading and
// writing, refusing a symlink in its place (ELOOP). O_NONBLOCK keeps a
// FIFO planted there from blocking the open; the caller checks the type.
func openFileNoFollow(dirfd int, name string) (int, error) {
	return eintr.Retry(func() (int, error) {
		return unix.Openat(dirfd, name, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_NOATIME, 0)
	})
}

// openForWrite asks the kernel whether the inode open as fd (read-only)
// is open for writing anywhere, by any open file or shared writable
// mapping: exactly then a read lease is refused with EAGAIN (fcntl(2)
// F_SETLEASE; the kernel compares the inode's write count, so this costs
// two calls however many processes there are). A granted lease is dropped
// at once; while it is held, a process opening the file for writing waits
// that long (or gets EWOULDBLOCK with O_NONBLOCK). ok is false where no
// lease can be taken: EACCES without CAP_LEASE on a file relinkd does not
// own, EINVAL on filesystems without leases (NFS) or with
// fs.leases-enable = 0.
func openForWrite(fd int) (writing, ok bool, err error) {
	_, err = eintr.Retry(func() (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_RDLCK) })
	switch {
	case err == nil:
		if _, err := eintr.Retry(func() (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK) }); err != nil {
			return false, true, fmt.Errorf("drop read lease: %w", err)
		}
		return false, true, nil
	case errors.Is(err, unix.EAGAIN):
		return true, true, nil
	default:
		return false, false, err
	}
}
