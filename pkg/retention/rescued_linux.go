package retention

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/layout"
)

// FileFacts is what lstat (statx(2), no symlink followed) says of a file
// under a rescue root.
type FileFacts struct {
	Dev, Ino  uint64
	Nlink     uint32
	Size      int64
	Blocks    int64  // st_blocks, 512-byte units
	Mode      uint32 // st_mode, type and permission bits
	UID, GID  uint32
	Mtime     time.Time
	BirthTime int64 // ns since the epoch; 0 where the filesystem records none
}

// RescuedFile is a rescued file found under a rescue root with its
// sidecar, or a sidecar found without its file, as they are on disk:
// nothing in it is trusted yet (relink.ReadSidecar and Verify check it).
type RescuedFile struct {
	Root string // the rescue root, a host path reached through via
	Rel  string // path below Root of the rescued file (for a lone sidecar, of the file it describes)
	// HasFile: a regular file of that name is there; File describes it.
	HasFile bool
	File    FileFacts
	// HasSidecar: a regular file NAME.relinkd.json is beside it; Sidecar
	// holds its bytes, or SidecarErr says why it could not be read.
	HasSidecar  bool
	Sidecar     []byte
	SidecarErr  error
	SidecarFile FileFacts
	// Untrusted, when set, says why the directories that hold the file
	// could have been written by someone other than root (an owner other
	// than root, or write permission for group or others, on the root or
	// any directory between it and the file): what is there may not be
	// relinkd's work.
	Untrusted string
}

// ErrRescueRoot wraps why a rescue root could not be listed.
var ErrRescueRoot = errors.New("rescue root not listed")

// WalkRescued calls fn, in path order, for every rescued file under root
// (a host path, reached through the prefix via: see mounts.Host.Via) and
// every sidecar without its file: only the names the engine writes (see
// layout), found by retention's walk, which opens each
// directory with O_NOFOLLOW beneath its parent and never follows a
// symlink or leaves root. Sidecars are read as Sidecars reads them
// (readSmall: O_NOFOLLOW|O_NONBLOCK beneath their directory, at most
// layout.MaxSidecarSize bytes). A root that does not exist gives no call
// and no error. Unlike Sidecars, it also reports rescued files that have
// no sidecar, and which directories someone other than root could write.
func WalkRescued(via, root string, fn func(RescuedFile)) error {
	type entry struct {
		dirfd      int
		name, rel  string
		isSidecar  bool
		sidecarFor string // rel of the file, for a sidecar
	}
	var entries []entry
	t, err := walkRoot(via+root, func(f rescued) {
		switch f.kind {
		case rescuedFile:
			entries = append(entries, entry{dirfd: f.dirfd, name: f.name, rel: f.rel})
		case sidecar:
			entries = append(entries, entry{dirfd: f.dirfd, name: f.name, rel: f.rel, isSidecar: true,
				sidecarFor: strings.TrimSuffix(f.rel, layout.SidecarSuffix)})
		}
	})
	defer t.close()
	if err != nil {
		if errors.Is(err, errNotExist) {
			return nil
		}
		return fmt.Errorf("%w: %w", ErrRescueRoot, err)
	}
	untrusted := dirTrust(root, t)
	files := map[string]bool{}
	for _, e := range entries {
		if !e.isSidecar {
			files[e.rel] = true
		}
	}
	for _, e := range entries {
		var rf RescuedFile
		switch {
		case !e.isSidecar:
			rf = RescuedFile{Root: root, Rel: e.rel, HasFile: true}
			var err error
			if rf.File, err = statAt(e.dirfd, e.name); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue // removed meanwhile (retention)
				}
				return fmt.Errorf("%w: stat %s/%s: %w", ErrRescueRoot, root, e.rel, err)
			}
			side := e.name + layout.SidecarSuffix
			sf, serr := statAt(e.dirfd, side)
			switch {
			case errors.Is(serr, unix.ENOENT):
			case serr != nil:
				rf.HasSidecar, rf.SidecarErr = true, serr
			case sf.Mode&unix.S_IFMT != unix.S_IFREG:
				rf.HasSidecar, rf.SidecarErr = true, fmt.Errorf("not a regular file (mode %#o)", sf.Mode)
			default:
				rf.HasSidecar, rf.SidecarFile = true, sf
				rf.Sidecar, rf.SidecarErr = readSmall(e.dirfd, side, layout.MaxSidecarSize)
			}
		case files[e.sidecarFor]:
			continue // read with its file
		default:
			rf = RescuedFile{Root: root, Rel: e.sidecarFor, HasSidecar: true}
			var err error
			if rf.SidecarFile, err = statAt(e.dirfd, e.name); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue
				}
				rf.SidecarErr = err
			} else {
				rf.Sidecar, rf.SidecarErr = readSmall(e.dirfd, e.name, layout.MaxSidecarSize)
			}
		}
		rf.Untrusted = untrusted[e.dirfd]
		fn(rf)
	}
	return nil
}

// dirTrust says, for every directory of t by descriptor, why it or one
// above it up to the root could have been written by someone other than
// root ("" when nothing could). The walk visits a directory before its
// children, so each parent is settled before them.
func dirTrust(root string, t *tree) map[int]string {
	out := make(map[int]string, len(t.fds))
	own := func(fd int, path string) string {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Sprintf("fstat %s: %v", path, err)
		}
		switch {
		case st.Uid != 0:
			return fmt.Sprintf("%s is owned by uid %d", path, st.Uid)
		case st.Mode&0o022 != 0:
			return fmt.Sprintf("%s is writable by group or others (mode %o)", path, st.Mode&0o7777)
		}
		return ""
	}
	if len(t.fds) == 0 {
		return out
	}
	out[t.fds[0]] = own(t.fds[0], root)
	paths := map[int]string{t.fds[0]: root}
	for _, d := range t.dirs {
		paths[d.fd] = paths[d.parent] + "/" + d.name
		if why := out[d.parent]; why != "" {
			out[d.fd] = why
			continue
		}
		out[d.fd] = own(d.fd, paths[d.fd])
	}
	return out
}

// statAt lstats name in dirfd (statx(2), AT_SYMLINK_NOFOLLOW).
func statAt(dirfd int, name string) (FileFacts, error) {
	var st unix.Statx_t
	err := eintr.Retry0(func() error {
		return unix.Statx(dirfd, name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_SYNC_AS_STAT,
			unix.STATX_BASIC_STATS|unix.STATX_BTIME, &st)
	})
	if err != nil {
		return FileFacts{}, err
	}
	f := FileFacts{
		Dev: unix.Mkdev(st.Dev_major, st.Dev_minor), Ino: st.Ino, Nlink: st.Nlink,
		Size: int64(st.Size), Blocks: int64(st.Blocks), Mode: uint32(st.Mode), UID: st.Uid, GID: st.Gid,
		Mtime: time.Unix(st.Mtime.Sec, int64(st.Mtime.Nsec)),
	}
	if st.Mask&unix.STATX_BTIME != 0 {
		f.BirthTime = st.Btime.Sec*1_000_000_000 + int64(st.Btime.Nsec)
	}
	return f, nil
}

// SidecarFileProblem says why the sidecar file itself cannot be one the
// engine wrote ("" when it can): the engine writes it as root, mode 0600
// (never more than the owner's bits), with one link.
func (r *RescuedFile) SidecarFileProblem() string {
	f := r.SidecarFile
	switch {
	case f.UID != 0:
		return fmt.Sprintf("the sidecar is owned by uid %d, not root", f.UID)
	case f.Mode&0o077 != 0:
		return fmt.Sprintf("the sidecar has mode %o, not 0600", f.Mode&0o7777)
	case f.Nlink != 1:
		return fmt.Sprintf("the sidecar has %d links", f.Nlink)
	}
	return ""
}
