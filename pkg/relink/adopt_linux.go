package relink

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
)

// Adoption is a rescue made earlier, by this process or another relinkd
// (one that a restart or a kill ended), as its sidecar describes it.
type Adoption struct {
	// Root is the rescue root the rescued file was found under, as in
	// Destination.Root; Via as in Destination.Via.
	Root string
	Via  string
	// Rel is the rescued file's path below Root, exactly as it was found
	// (not a name to make unique: nothing is created).
	Rel string
	// Sidecar is the sidecar found beside it (ParseSidecar).
	Sidecar Sidecar
	// Progress as in Destination.Progress, for the follow.
	Progress func()
}

// Adopt makes p, a new pin of the file that a sidecar describes, the pin
// of that earlier rescue, and returns it as Rescued, so that Follow
// continues it: the rescued file keeps growing, from its current size, and
// no second copy is made.
//
// Nothing is created and nothing is trusted by name. The pinned file must
// be the sidecar's source: the same dev and ino and the same non-zero birth
// time (statx(2) STATX_BTIME), so that a file that reuses the inode number
// is refused. The directory is opened below the root with the engine's
// walker (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, or one component at
// a time with O_NOFOLLOW), the root itself without following a symlink and
// only if owned by us and not writable by group or others, as Rescue does.
// The rescued file is opened O_RDWR|O_NOFOLLOW and must be the regular
// file the sidecar names (Sidecar.Describes); after a link it is the
// pinned inode itself and is not opened.
//
// Errors wrap ErrIdentity (another file is pinned), ErrSidecar (the file
// is not the one the sidecar describes) or ErrUnsafePath, inside a
// *RescueError; nothing is changed then, and the pin can still be rescued
// anew.
func (e *Engine) Adopt(p *Pin, a Adoption) (*Rescued, error) {
	c := p.c
	s := a.Sidecar
	fail := func(err error) (*Rescued, error) {
		return nil, &RescueError{Op: "adopt", Method: s.Method, PID: c.PID, FD: c.FD, Path: string(c.Path), Err: err}
	}
	if err := p.free(); err != nil {
		return fail(err)
	}
	if c.Dev != s.Dev || c.Ino != s.Ino {
		return fail(fmt.Errorf("%w: pinned dev %d ino %d, the sidecar's source is dev %d ino %d", ErrIdentity, c.Dev, c.Ino, s.Dev, s.Ino))
	}
	bt, err := birthTime(p.fd)
	if err != nil {
		return fail(fmt.Errorf("birth time of the pinned file: %w", err))
	}
	if bt == 0 || bt != s.BirthTime {
		return fail(fmt.Errorf("%w: pinned file born %d, the sidecar's source %d (0: not recorded)", ErrIdentity, bt, s.BirthTime))
	}
	dir, leaf, err := e.walk.openExisting(Destination{Root: a.Root, Via: a.Via}, a.Rel)
	if err != nil {
		return fail(err)
	}
	keep := false
	defer func() {
		if !keep {
			unix.Close(dir.fd)
		}
	}()
	path := dir.path + "/" + leaf
	var st unix.Stat_t
	if err := eintr.Retry0(func() error { return unix.Fstatat(dir.fd, leaf, &st, unix.AT_SYMLINK_NOFOLLOW) }); err != nil {
		return fail(fmt.Errorf("%w: %s: %w", ErrSidecar, path, err))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fail(fmt.Errorf("%w: %s is not a regular file (mode %#o)", ErrUnsafePath, path, st.Mode))
	}
	var dst *os.File
	if s.Method != MethodLink {
		fd, err := openFileNoFollow(dir.fd, leaf)
		if err != nil {
			return fail(fmt.Errorf("open %s: %w", path, err))
		}
		dst = os.NewFile(uintptr(fd), path)
		if st, err = fstat(fd); err != nil {
			dst.Close()
			return fail(fmt.Errorf("fstat %s: %w", path, err))
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			dst.Close()
			return fail(fmt.Errorf("%w: %s is not a regular file (mode %#o)", ErrUnsafePath, path, st.Mode))
		}
		// O_NONBLOCK only guarded the open against a planted FIFO.
		if err := unix.SetNonblock(fd, false); err != nil {
			dst.Close()
			return fail(fmt.Errorf("clear O_NONBLOCK on %s: %w", path, err))
		}
	} else if pst, err := fstat(p.fd); err != nil || pst.Dev != st.Dev || pst.Ino != st.Ino {
		return fail(fmt.Errorf("%w: %s is not the pinned inode", ErrSidecar, path))
	}
	rfd := p.fd
	if dst != nil {
		rfd = int(dst.Fd())
	}
	rbt, err := birthTime(rfd)
	if err == nil {
		err = s.Describes(uint64(st.Dev), st.Ino, st.Size, rbt)
	}
	if err != nil {
		if dst != nil {
			dst.Close()
		}
		return fail(fmt.Errorf("%s: %w", path, err))
	}
	res := Result{Path: path, Method: s.Method, Bytes: st.Size, SHA256: s.SHA256, Sidecar: path + sidecarSuffix}
	rule := ""
	if s.Rule != nil {
		rule = *s.Rule
	}
	r := &Rescued{e: e, pin: p, rule: rule, progress: a.Progress, orig: &s,
		dst: dst, dir: dir, res: res, following: s.Following}
	if r.progress == nil {
		r.progress = e.progress
	}
	p.keep(r)
	keep = true
	return r, nil
}

// openExisting opens the directory of rel, an existing file below the
// rescue root d.Root, and returns it with the file's name. Unlike openDest
// it creates nothing: a missing level is an error. Every component is
// opened beneath the previous one, never following a symlink.
func (w walker) openExisting(d Destination, rel string) (destDir, string, error) {
	comps := strings.Split(rel, "/")
	leaf := comps[len(comps)-1]
	if leaf == "" || leaf == "." || leaf == ".." {
		return destDir{}, "", fmt.Errorf("%w: %q names no file", ErrUnsafePath, rel)
	}
	root := filepath.Clean(d.Root)
	if !filepath.IsAbs(root) || d.Via != "" && !filepath.IsAbs(d.Via) {
		return destDir{}, "", fmt.Errorf("%w: rescue root %q (via %q) is not absolute", ErrUnsafePath, root, d.Via)
	}
	var fd int
	var err error
	if root == "/" {
		fd, err = openDir(d.Via + root)
	} else {
		var pfd int
		if pfd, err = openDir(d.Via + filepath.Dir(root)); err == nil {
			fd, err = w.beneath(pfd, filepath.Base(root))
			err = unsafeLevel(pfd, filepath.Base(root), err)
			unix.Close(pfd)
		}
	}
	if err != nil {
		return destDir{}, "", fmt.Errorf("open rescue root %s: %w", root, err)
	}
	st, err := fstat(fd)
	if err == nil && (int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0) {
		err = fmt.Errorf("%w: owned by uid %d with mode %#o", ErrUnsafePath, st.Uid, st.Mode&0o7777)
	}
	if err != nil {
		unix.Close(fd)
		return destDir{}, "", fmt.Errorf("rescue root %s: %w", root, err)
	}
	cur := destDir{fd: fd, path: root}
	for _, name := range comps[:len(comps)-1] {
		fd, err := w.beneath(cur.fd, name)
		err = unsafeLevel(cur.fd, name, err)
		unix.Close(cur.fd)
		if err != nil {
			return destDir{}, "", fmt.Errorf("under %s: open %q: %w", cur.path, name, err)
		}
		cur = destDir{fd: fd, path: cur.path + "/" + name}
	}
	return cur, leaf, nil
}

// unsafeLevel marks as ErrUnsafePath the error of opening the directory
// name in dirfd when a symlink or another non-directory is in its place:
// O_NOFOLLOW|O_DIRECTORY answers ELOOP or ENOTDIR for a symlink,
// RESOLVE_NO_SYMLINKS ELOOP and RESOLVE_BENEATH EXDEV.
func unsafeLevel(dirfd int, name string, err error) error {
	switch {
	case err == nil, errors.Is(err, ErrUnsafePath):
		return err
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV), errors.Is(err, unix.ENOTDIR):
		var st unix.Stat_t
		if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return fmt.Errorf("%w: %q is a symlink (refused): %w", ErrUnsafePath, name, err)
		}
		return fmt.Errorf("%w: %q is not a directory: %w", ErrUnsafePath, name, err)
	}
	return err
}
