package mounts

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/procfs"
)

// pathMount returns the mount id and device of path, or of its nearest
// existing ancestor when path does not exist yet (a rescue directory the
// daemon will create). statx(2) reports the mount id itself (STATX_MNT_ID,
// Linux 5.8), so overmounts and bind mounts are told apart exactly instead
// of guessed from path prefixes. It returns the path that was examined.
//
// via is the prefix through which path is reached (see hostView); it is
// not part of the path that is climbed or returned.
func pathMount(via, path string) (mntID int, dev uint64, at string, err error) {
	p := filepath.Clean(path)
	for {
		var st unix.Statx_t
		err := unix.Statx(unix.AT_FDCWD, via+p, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID|unix.STATX_TYPE, &st)
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
	return freeSpace("", path)
}

// freeSpace is FreeSpace of path reached through via (see hostView).
func freeSpace(via, path string) (avail, total uint64, err error) {
	p := filepath.Clean(path)
	for {
		var st unix.Statfs_t
		err := unix.Statfs(via+p, &st)
		if err == nil {
			return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
		}
		if !errors.Is(err, unix.ENOENT) || p == "/" {
			return 0, 0, fmt.Errorf("statfs %s: %w", p, err)
		}
		p = filepath.Dir(p)
	}
}

// hostView is how relinkd reaches the host's mount namespace, the one
// PID 1 runs in, where holders' files and the rescue roots of the
// configuration live. Under the shipped unit the daemon has a namespace
// of its own (ProtectSystem=, PrivateDevices= …) in which every mount is
// a copy, read-only but for a few paths; linkat(2) refuses to link across
// two copies (EXDEV), and a rescue root on a read-only copy cannot be
// created. Through /proc/1/root the daemon reaches the host's own mounts:
// writable where the host's are, the holder's vfsmount for link, and
// filesystems mounted after start-up. Where the namespaces are the same,
// or PID 1 cannot be inspected (not root, hidepid), via is "" and relinkd
// uses its own view.
//
// In container mode (WithHostRoot) the host's root is a directory DIR of
// relinkd's own view, a bind mount of the host's "/" (a Kubernetes
// hostPath, with the rescue roots bound read-write below it): via is DIR,
// and the host's mounts are relinkd's own mounts below DIR with DIR taken
// off their mount points (under). Those are the copies relinkd writes
// through, so their mount ids are the ones statx(2) gives through DIR,
// and their read-only flags say where relinkd itself can write, which a
// container runtime decides mount by mount.
type hostView struct {
	via       string // "", PROC/1/root or the host root DIR: prefix of every host path relinkd opens
	mountinfo string // the host's mount table
	under     string // container mode: only mounts at or below this directory of mountinfo, DIR removed
	note      string // why the own view is used although it may differ, for messages
}

// mounts returns the host's mount table (see hostView).
func (v hostView) mounts() ([]Mount, error) {
	ms, err := procfs.ReadMountInfo(v.mountinfo)
	if err != nil || v.under == "" {
		return ms, err
	}
	return mountsUnder(ms, v.under), nil
}

// mountsUnder returns the mounts of ms at or below dir, with dir taken
// off their mount points: dir's own mount becomes "/".
func mountsUnder(ms []Mount, dir string) []Mount {
	var out []Mount
	for _, m := range ms {
		rest, ok := strings.CutPrefix(m.MountPoint, dir)
		if !ok || rest != "" && rest[0] != '/' {
			continue
		}
		if rest == "" {
			rest = "/"
		}
		m.MountPoint = rest
		out = append(out, m)
	}
	return out
}

// containerView is the host view of container mode: the host's root at
// dir in relinkd's own mount namespace (see hostView).
func containerView(proc procfs.FS, dir string) hostView {
	return hostView{via: dir, mountinfo: proc.Path("self/mountinfo"), under: dir}
}

func findHostView(proc procfs.FS) hostView {
	self, err := proc.MountNS("self")
	v := hostView{mountinfo: proc.Path("self/mountinfo")}
	if err != nil {
		v.note = err.Error()
		return v
	}
	init, err := proc.MountNS("1")
	switch {
	case err != nil:
		v.note = "host mount namespace not reachable (" + err.Error() + "): relinkd's own is used"
	case init != self:
		v = hostView{via: proc.Path("1/root"), mountinfo: proc.Path("1/mountinfo")}
	}
	return v
}

// ErrUnsafeRoot is returned for a rescue root that exists but is not a
// root-owned directory that only root can write to.
var ErrUnsafeRoot = errors.New("unsafe rescue root")

// CheckRoot refuses an existing rescue root that is a symlink, not a
// directory, not owned by root or writable by group or others: in a
// world-writable filesystem (/tmp) anyone could plant "/tmp/.relinkd" to
// read what relinkd rescues or to redirect its writes. A root that does not
// exist yet is fine: the engine creates it 0700 root.
func CheckRoot(via, path string) error {
	var st unix.Stat_t
	err := unix.Lstat(via+path, &st)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("rescue root %s: %w", path, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("rescue root %s is not a directory (mode %o): %w", path, st.Mode, ErrUnsafeRoot)
	case st.Uid != 0:
		return fmt.Errorf("rescue root %s is owned by uid %d: %w", path, st.Uid, ErrUnsafeRoot)
	case st.Mode&0o022 != 0:
		return fmt.Errorf("rescue root %s is writable by group or others (mode %o): %w", path, st.Mode&0o7777, ErrUnsafeRoot)
	}
	return nil
}
