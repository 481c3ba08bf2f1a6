package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// pathMount returns the mount id and device of path, or of its nearest
// existing ancestor when path does not exist yet (a rescue directory the
// daemon will create). statx(2) reports the mount id itself (STATX_MNT_ID,
// Linux 5.8), so overmounts and bind mounts are told apart exactly instead
// of guessed from path prefixes. It returns the path that was examined.
func pathMount(path string) (mntID int, dev uint64, at string, err error) {
	p := filepath.Clean(path)
	for {
		var st unix.Statx_t
		err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID|unix.STATX_TYPE, &st)
		if err == nil {
			if st.Mask&unix.STATX_MNT_ID == 0 {
				return 0, 0, p, fmt.Errorf("statx %s: kernel gives no mount id: %w", p, errors.ErrUnsupported)
			}
			return int(st.Mnt_id), unix.Mkdev(st.Dev_major, st.Dev_minor), p, nil
		}
		if !errors.Is(err, unix.ENOENT) || p == "/" {
			return 0, 0, p, fmt.Errorf("statx %s: %w", p, err)
		}
		p = filepath.Dir(p)
	}
}

// FreeSpace returns the bytes available to an unprivileged writer and the
// total size of the filesystem holding path (statfs(2)), looking at the
// nearest existing ancestor when path does not exist yet.
func FreeSpace(path string) (avail, total uint64, err error) {
	p := filepath.Clean(path)
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
		}
		if !errors.Is(err, unix.ENOENT) || p == "/" {
			return 0, 0, fmt.Errorf("statfs %s: %w", p, err)
		}
		p = filepath.Dir(p)
	}
}

// mountNS returns the mount namespace of a process as readlink shows it
// ("mnt:[4026531841]"), to tell whether its mount ids and paths are ours.
func mountNS(procRoot, pid string) (string, error) {
	s, err := os.Readlink(filepath.Join(procRoot, pid, "ns", "mnt"))
	if err != nil {
		return "", fmt.Errorf("mount namespace of %s: %w", pid, err)
	}
	return s, nil
}
