package relink

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/layout"
	"github.com/relinkd/relinkd/internal/logging"
)

// ErrExists: the restore target exists and Target.Replace is not set;
// nothing was written.
var ErrExists = errors.New("target exists")

// ErrOtherFS: the target directory is not on the filesystem that
// Target.Dev names; nothing was written.
var ErrOtherFS = errors.New("target directory is on another filesystem")

// Target says where Restore puts a rescued file back.
type Target struct {
	// Path is the absolute path of the file to create. Its directory is
	// resolved from "/" one component at a time, never following a
	// symlink (openat2 with RESOLVE_NO_SYMLINKS, or O_NOFOLLOW per
	// component where a sandbox refuses openat2): a symlink anywhere on
	// the way, or in Path's place, is refused with ErrUnsafePath.
	Path string
	// Via is the prefix through which the engine reaches Path's "/": ""
	// for its own view, or a /proc/PID/root magic link (the host's view,
	// mounts.Host.Via). Messages and results name Path without it.
	Via string
	// Mkdir creates the directories of Path that do not exist (mode 0755
	// less the umask); without it a missing directory is an error.
	Mkdir bool
	// Replace lets an existing regular file at Path be replaced, in one
	// rename(2): a reader sees the old file or the new one, never a mix.
	// Without it an existing file is left alone (ErrExists).
	Replace bool
	// Dev, when not 0, is the st_dev the directory must have
	// (ErrOtherFS otherwise): the original directory of a rescued file is
	// on the filesystem the file came from, unless the name is in another
	// mount namespace's view (a container's) or the mounts changed.
	Dev uint64
	// MinFreeBytes: a copy that would leave less free space than this on
	// the target's filesystem is refused (ErrNoSpace).
	MinFreeBytes uint64
}

// TargetState is what CheckTarget found at a Target.
type TargetState struct {
	Exists  bool   // a regular file is at Path (Restore replaces it only with Replace)
	Missing string // the first directory of Path that does not exist ("" if none), created by Restore with Mkdir
}

// Restored describes a finished restore.
type Restored struct {
	Path     string        // the restored file, Target.Path
	Method   Method        // how its data got there
	Bytes    int64         // its size
	Replaced bool          // it took the place of an existing file
	Duration time.Duration // wall time
}

// OpenRescued opens the rescued file rel below the rescue root root,
// reached through via, for reading: the root opened without following a
// symlink in its place (its parent is trusted configuration), each
// directory below it beneath the previous one without following any, and
// the file with O_NOFOLLOW. Only a regular file is returned.
func (e *Engine) OpenRescued(root, via, rel string) (*os.File, error) {
	root = filepath.Clean(root)
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("%w: rescue root %q is not absolute", ErrUnsafePath, root)
	}
	dirs, leaf := splitRel(rel)
	if leaf != rel[strings.LastIndexByte(rel, '/')+1:] {
		return nil, fmt.Errorf("%w: %q is not a rescued name", ErrUnsafePath, rel)
	}
	var cur int
	var err error
	if root == "/" {
		cur, err = openDir(via + "/")
	} else {
		pfd, perr := openDir(via + filepath.Dir(root))
		if perr != nil {
			return nil, fmt.Errorf("open parent of rescue root %s: %w", root, perr)
		}
		cur, err = e.walk.openSub(pfd, filepath.Base(root), false, 0)
		unix.Close(pfd)
	}
	if err != nil {
		return nil, fmt.Errorf("open rescue root %s: %w", root, err)
	}
	at := root
	for _, name := range dirs {
		fd, err := e.walk.openSub(cur, name, false, 0)
		unix.Close(cur)
		if err != nil {
			return nil, fmt.Errorf("under %s: %w", at, err)
		}
		cur, at = fd, at+"/"+name
	}
	defer unix.Close(cur)
	path := at + "/" + leaf
	fd, err := openRescuedFile(cur, leaf)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%w: %s is a symlink", ErrUnsafePath, path)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	st, err := fstat(fd)
	if err == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
		err = fmt.Errorf("%w: mode %#o", ErrNotRegular, st.Mode)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// CheckTarget resolves t's directory as Restore would, without writing
// anything, and says what is there: for a dry run, and to check every
// file of a set before any is restored. It fails as Restore would: a
// symlink on the way or in Path's place (ErrUnsafePath), a missing
// directory without Mkdir, a directory on another filesystem than t.Dev
// (ErrOtherFS), something other than a regular file at Path, or a file
// there without t.Replace (ErrExists).
func (e *Engine) CheckTarget(t Target) (TargetState, error) {
	dir, leaf, missing, err := e.openTarget(t, false)
	if err != nil {
		return TargetState{}, err
	}
	if missing != "" {
		return TargetState{Missing: missing}, nil
	}
	defer unix.Close(dir.fd)
	exists, err := checkLeaf(dir, leaf, t)
	return TargetState{Exists: exists}, err
}

// Restore puts the rescued file open as src back at t.Path with the
// engine's ladder: link where the target is on the rescued file's mount
// (the restored file is then the rescued inode itself), else reflink,
// else copy (sparse, in the kernel), into an unnamed O_TMPFILE in the
// target directory, fsynced and linked into place, so that no partial
// file is ever visible. Owner, group, mode, timestamps and extended
// attributes are the rescued file's (set-id bits and file capabilities
// are not carried, as in a rescue). An existing file is never touched
// without t.Replace, and then replaced in one rename(2). Nothing is
// written through a symlink. It logs "file restored".
func (e *Engine) Restore(ctx context.Context, src *os.File, t Target) (Restored, error) {
	start := time.Now()
	fail := func(m Method, err error) (Restored, error) {
		if m != "" {
			return Restored{}, fmt.Errorf("restore %s by %s: %w", t.Path, m, err)
		}
		return Restored{}, fmt.Errorf("restore %s: %w", t.Path, err)
	}
	st, err := fstat(int(src.Fd()))
	if err != nil {
		return fail("", fmt.Errorf("fstat %s: %w", src.Name(), err))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fail("", fmt.Errorf("%s: %w", src.Name(), ErrNotRegular))
	}
	dir, leaf, _, err := e.openTarget(t, true)
	if err != nil {
		return fail("", err)
	}
	defer unix.Close(dir.fd)
	exists, err := checkLeaf(dir, leaf, t)
	if err != nil {
		return fail("", err)
	}
	nm := exactName(leaf)
	if t.Replace {
		nm = replacing(leaf)
	}
	var skipped []string
	for _, m := range e.methods {
		if err := ctx.Err(); err != nil {
			return fail(m, err)
		}
		res, dst, err := e.attempt(ctx, m, int(src.Fd()), dir, nm, t.MinFreeBytes, e.progress)
		if errors.Is(err, errNotHere) {
			e.log.Debug("restore method not supported here", logging.Path("path", []byte(t.Path)),
				zap.String("method", string(m)), zap.Error(err))
			skipped = append(skipped, err.Error())
			continue
		}
		if errors.Is(err, unix.EEXIST) {
			// Created meanwhile: still never replaced without Replace.
			err = fmt.Errorf("%w: %s", ErrExists, t.Path)
		}
		if err != nil {
			return fail(m, err)
		}
		if dst != nil {
			dst.Close()
		}
		r := Restored{Path: t.Path, Method: m, Bytes: res.Bytes, Replaced: exists, Duration: time.Since(start)}
		e.log.Info("file restored", logging.Path("path", []byte(t.Path)), logging.Path("from", []byte(src.Name())),
			zap.String("method", string(m)), zap.Int64("bytes", r.Bytes), zap.Bool("replaced", r.Replaced),
			zap.Duration("duration", r.Duration))
		return r, nil
	}
	return fail("", fmt.Errorf("%w: %s", ErrUnsupported, strings.Join(skipped, "; ")))
}

// openTarget opens the directory of t.Path from "/" (through t.Via), one
// component at a time without following a symlink, creating missing ones
// when create and t.Mkdir are set. It returns the directory and the leaf
// name; or, when a directory is missing and nothing may be created yet,
// the first missing one (no directory is then open). It refuses a
// directory on another filesystem than t.Dev.
func (e *Engine) openTarget(t Target, create bool) (destDir, string, string, error) {
	clean := filepath.Clean(t.Path)
	if !filepath.IsAbs(clean) || clean == "/" {
		return destDir{}, "", "", fmt.Errorf("%w: restore target %q is not an absolute file name", ErrUnsafePath, t.Path)
	}
	if t.Via != "" && !filepath.IsAbs(t.Via) {
		return destDir{}, "", "", fmt.Errorf("%w: %q is not absolute", ErrUnsafePath, t.Via)
	}
	leaf := filepath.Base(clean)
	if len(leaf) > 255 {
		return destDir{}, "", "", fmt.Errorf("restore target %s: %w", t.Path, unix.ENAMETOOLONG)
	}
	fd, err := openDir(t.Via + "/")
	if err != nil {
		return destDir{}, "", "", fmt.Errorf("open /: %w", err)
	}
	cur := destDir{fd: fd, path: ""}
	if d := filepath.Dir(clean); d != "/" {
		for _, name := range strings.Split(d[1:], "/") {
			next := cur.path + "/" + name
			sub, err := e.walk.openSub(cur.fd, name, create && t.Mkdir, 0o755)
			if errors.Is(err, unix.ENOENT) && t.Mkdir && !create {
				unix.Close(cur.fd)
				return destDir{}, leaf, next, nil
			}
			unix.Close(cur.fd)
			if errors.Is(err, unix.ENOENT) {
				return destDir{}, "", "", fmt.Errorf("directory %s does not exist: %w", next, err)
			}
			if err != nil {
				return destDir{}, "", "", fmt.Errorf("under %s: %w", cur.path+"/", err)
			}
			cur = destDir{fd: sub, path: next}
		}
	}
	if t.Dev != 0 {
		st, err := fstat(cur.fd)
		if err != nil {
			unix.Close(cur.fd)
			return destDir{}, "", "", fmt.Errorf("fstat %s/: %w", cur.path, err)
		}
		if uint64(st.Dev) != t.Dev {
			unix.Close(cur.fd)
			return destDir{}, "", "", fmt.Errorf("%w: %s/ is on device %d:%d, the rescued file came from %d:%d",
				ErrOtherFS, cur.path, unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)), unix.Major(t.Dev), unix.Minor(t.Dev))
		}
	}
	return cur, leaf, "", nil
}

// checkLeaf says whether a regular file is at leaf in dir, refusing
// anything else there (a symlink would be replaced, not written through,
// but a symlink where the file was is not what a restore should touch),
// and a file without t.Replace.
func checkLeaf(dir destDir, leaf string, t Target) (bool, error) {
	var st unix.Stat_t
	err := eintr.Retry0(func() error { return unix.Fstatat(dir.fd, leaf, &st, unix.AT_SYMLINK_NOFOLLOW) })
	switch {
	case errors.Is(err, unix.ENOENT):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("stat %s: %w", t.Path, err)
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return false, fmt.Errorf("%w: %s is a symlink (refused, nothing written)", ErrUnsafePath, t.Path)
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return false, fmt.Errorf("%s exists and is not a regular file (mode %#o): %w", t.Path, st.Mode, ErrExists)
	case !t.Replace:
		return true, fmt.Errorf("%w: %s (--force replaces it)", ErrExists, t.Path)
	}
	return true, nil
}

// replacing publishes under leaf, replacing whatever file is there: the
// new inode is linked under a hidden temporary name first, then renamed
// over leaf (rename(2) replaces atomically); the temporary name is removed
// on every error.
func replacing(leaf string) namer {
	return namer{leaf: leaf, place: func(dir destDir, link func(string) error) (string, error) {
		var rnd [layout.TempRandBytes]byte
		for i := 0; i < 100; i++ {
			_, _ = rand.Read(rnd[:])
			tmp := "." + leaf + layout.TempMarker + hex.EncodeToString(rnd[:])
			if len(tmp) > 255 {
				tmp = layout.TempMarker + hex.EncodeToString(rnd[:])
			}
			err := link(tmp)
			if errors.Is(err, unix.EEXIST) {
				continue
			}
			if err != nil {
				return "", err
			}
			if err := eintr.Retry0(func() error { return unix.Renameat(dir.fd, tmp, dir.fd, leaf) }); err != nil {
				_ = unix.Unlinkat(dir.fd, tmp, 0)
				return "", err
			}
			// When leaf already was this very inode (restored by link
			// before), rename(2) does nothing and leaves tmp in place.
			var a, b unix.Stat_t
			if unix.Fstatat(dir.fd, tmp, &a, unix.AT_SYMLINK_NOFOLLOW) == nil &&
				unix.Fstatat(dir.fd, leaf, &b, unix.AT_SYMLINK_NOFOLLOW) == nil && a.Dev == b.Dev && a.Ino == b.Ino {
				_ = unix.Unlinkat(dir.fd, tmp, 0)
			}
			return leaf, nil
		}
		return "", fmt.Errorf("no free temporary name in %s: %w", dir.path, unix.EEXIST)
	}}
}

// openRescuedFile opens the file name in dirfd for reading, refusing a
// symlink in its place (ELOOP). O_NONBLOCK and O_NOCTTY keep a FIFO or a
// tty planted there from blocking the open or becoming our terminal;
// O_NOATIME keeps the atime that is restored with the data (it needs
// ownership or CAP_FOWNER: EPERM retries without).
func openRescuedFile(dirfd int, name string) (int, error) {
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC
	fd, err := eintr.Retry(func() (int, error) { return unix.Openat(dirfd, name, flags|unix.O_NOATIME, 0) })
	if errors.Is(err, unix.EPERM) {
		fd, err = eintr.Retry(func() (int, error) { return unix.Openat(dirfd, name, flags, 0) })
	}
	return fd, err
}
