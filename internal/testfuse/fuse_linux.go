package testfuse

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
)

// fusectlDir is where systemd mounts the fuse control filesystem
// (fusectl): one directory per connection, named by the kernel's dev_t of
// the superblock, holding "abort" and "waiting" (Documentation/
// filesystems/fuse.rst, "Control filesystem").
const fusectlDir = "/sys/fs/fuse/connections"

// openDevice opens /dev/fuse, close-on-exec so that holder processes do
// not inherit the connection.
func openDevice() (int, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: "/dev/fuse", Err: err}
	}
	return fd, nil
}

// mountFUSE mounts the connection on fd at dir (mount(2), fuse(4)): no
// default_permissions, so the kernel leaves permission checks to the
// server (which allows everything) and sends no GETATTR before OPEN;
// allow_other, so holders of any user reach it.
func mountFUSE(dir string, fd int) error {
	data := fmt.Sprintf("fd=%d,rootmode=40000,user_id=%d,group_id=%d,allow_other", fd, os.Getuid(), os.Getgid())
	if err := unix.Mount("testfuse", dir, "fuse.testfuse", unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
		return &os.PathError{Op: "mount fuse.testfuse", Path: dir, Err: err}
	}
	return nil
}

// detach unmounts dir lazily (umount2(2) MNT_DETACH): it leaves the
// namespace at once, even while holders keep files on it open.
func detach(dir string) error {
	if err := eintr.Retry0(func() error { return unix.Unmount(dir, unix.MNT_DETACH) }); err != nil {
		return &os.PathError{Op: "umount", Path: dir, Err: err}
	}
	return nil
}

// connName returns the fusectl directory name of the mount at dir: the
// kernel's dev_t of the superblock (MKDEV: major<<20 | minor), printed
// in decimal. dir must already be served: stat(2) sends GETATTR.
func connName(dir string) (string, uint64, error) {
	var st unix.Stat_t
	if err := eintr.Retry0(func() error { return unix.Stat(dir, &st) }); err != nil {
		return "", 0, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	kdev := uint64(unix.Major(st.Dev))<<20 | uint64(unix.Minor(st.Dev))
	return strconv.FormatUint(kdev, 10), st.Dev, nil
}

// abortFile finds the "abort" file of connection name. When fusectl is
// not mounted at fusectlDir, it mounts a private instance at spare (the
// kernel keeps a single fusectl superblock, so every mount shows every
// connection) and returns spare as the mount to remove afterwards.
func abortFile(name, spare string) (path, mounted string, err error) {
	path = filepath.Join(fusectlDir, name, "abort")
	if _, err := os.Stat(path); err == nil {
		return path, "", nil
	}
	if err := unix.Mount("fusectl", spare, "fusectl", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return "", "", &os.PathError{Op: "mount fusectl", Path: spare, Err: err}
	}
	path = filepath.Join(spare, name, "abort")
	if _, err := os.Stat(path); err != nil {
		_ = detach(spare)
		return "", "", fmt.Errorf("fusectl has no connection %s: %w", name, err)
	}
	return path, spare, nil
}

// abortConn aborts the connection through fusectl: every request waiting
// for an answer ends with ECONNABORTED, later ones fail at once with
// ENOTCONN, and reads of /dev/fuse return ENODEV.
func abortConn(path string) error {
	return os.WriteFile(path, []byte("1"), 0)
}

// primePoll makes the kernel stop sending POLL on this connection. The
// first poll of a file on a FUSE mount, which includes the epoll_ctl(2)
// that package os makes on every os.Open, is sent to the server as POLL;
// after one ENOSYS the kernel answers every later poll itself
// (fuse_file_poll). Go's runtime makes that epoll_ctl without telling
// the scheduler, so while it waits for a server in the same process the
// next stop-the-world waits for it too and the server never runs again:
// golang/go#21014. Here the POLL comes from poll(2), an ordinary system
// call, on a file that is created and unlinked at once.
func primePoll(dir string) error {
	p := filepath.Join(dir, ".testfuse-poll")
	fd, err := eintr.Retry(func() (int, error) {
		return unix.Open(p, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	})
	if err != nil {
		return &os.PathError{Op: "open", Path: p, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Unlink(p); err != nil {
		return &os.PathError{Op: "unlink", Path: p, Err: err}
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if _, err := eintr.Retry(func() (int, error) { return unix.Poll(fds, 0) }); err != nil {
		return &os.PathError{Op: "poll", Path: p, Err: err}
	}
	return nil
}

// readRequest reads one request from /dev/fuse into buf.
func readRequest(fd int, buf []byte) (int, error) {
	return unix.Read(fd, buf)
}

// writeReply writes one whole reply to /dev/fuse.
func writeReply(fd int, msg []byte) error {
	n, err := eintr.Retry(func() (int, error) { return unix.Write(fd, msg) })
	if err == nil && n != len(msg) {
		err = fmt.Errorf("short write of %d of %d bytes", n, len(msg))
	}
	return err
}

// isGone reports whether err from reading or writing /dev/fuse means the
// connection is over (ENODEV after an abort or unmount; ECONNABORTED when
// the server asked for FUSE_ABORT_ERROR) rather than a failure.
func isGone(err error) bool {
	return errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ECONNABORTED)
}
