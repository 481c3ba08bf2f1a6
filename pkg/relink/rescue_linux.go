package relink

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/logging"
)

// errNotHere marks a method that does not work for this file or
// destination; the ladder moves on to the next one.
var errNotHere = errors.New("not supported here")

// notHere reports whether err means "this method cannot work here":
// EXDEV (other mount or filesystem), EOPNOTSUPP, EINVAL, ENOTTY, ENOSYS.
func notHere(err error) bool {
	return errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EOPNOTSUPP) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.ENOSYS)
}

// Rescue gives the pinned file a name again under d, trying d's methods
// (or the engine's) in order and moving down only when one is not
// supported here. On success the file is published under a unique name
// (never replacing anything), a sidecar is written if configured and the
// Rescued returned: it owns the rescued file, and Follow continues it;
// closing it (or p) releases both. On failure nothing is left visible and
// the error is a *RescueError (test it with errors.Is against ErrNoSpace,
// ErrUnsafePath, ErrUnsupported, context.Canceled …). Rescue logs no
// event: its caller (pkg/pipeline) says what became of the file.
//
// A copy is bounded to the size seen when it starts: a file still being
// written gives a consistent prefix, and a file truncated during the copy
// ends it cleanly at the new length. Follow appends later growth.
func (e *Engine) Rescue(ctx context.Context, p *Pin, d Destination) (*Rescued, error) {
	c := p.c
	r, err := e.rescue(ctx, p, d, time.Now())
	if err != nil {
		var re *RescueError
		if !errors.As(err, &re) {
			re = &RescueError{Op: "rescue", PID: c.PID, FD: c.FD, Path: string(c.Path), Err: err}
		}
		return nil, re
	}
	return r, nil
}

func (e *Engine) rescue(ctx context.Context, p *Pin, d Destination, start time.Time) (*Rescued, error) {
	c := p.c
	fail := func(m Method, err error) (*Rescued, error) {
		return nil, &RescueError{Op: "rescue", Method: m, PID: c.PID, FD: c.FD, Path: string(c.Path), Err: err}
	}
	if err := p.free(); err != nil {
		return fail("", err)
	}
	dir, leaf, err := e.walk.openDest(d)
	if err != nil {
		return fail("", err)
	}
	defer unix.Close(dir.fd)
	if d.Beneath {
		// d.Via named the holder by pid: if the holder is still the
		// one pinned now, after its root was opened, that root was
		// its root (a pid is not reused while its process lives).
		switch start, err := e.startTime(c.PID); {
		case err != nil:
			return fail("", fmt.Errorf("%w: the holder exited before its root %s could be used: %w", ErrVanished, d.Via, err))
		case start != p.startTime:
			return fail("", fmt.Errorf("%w: pid %d is another process (start time %d, pinned %d): its root %s is not the holder's",
				ErrIdentity, c.PID, start, p.startTime, d.Via))
		}
	}
	var skipped []string
	progress := e.progressFor(d)
	for _, m := range e.methodsFor(d) {
		if err := ctx.Err(); err != nil {
			return fail(m, err)
		}
		res, dst, err := e.attempt(ctx, m, p.fd, dir, uniqueName(leaf), d.MinFreeBytes, progress)
		if errors.Is(err, errNotHere) {
			e.log.Debug("rescue method not supported here", zap.Int("pid", c.PID), zap.Int("fd", c.FD),
				zap.String("method", string(m)), zap.Error(err))
			skipped = append(skipped, err.Error())
			continue
		}
		if err != nil {
			return fail(m, err)
		}
		res.Method = m
		// The published copy (nil after a link) and its directory stay
		// open for Follow, which appends and rewrites the sidecar.
		r := &Rescued{e: e, pin: p, rule: d.Rule, progress: progress, dst: dst, dir: destDir{fd: -1}}
		p.keep(r)
		if e.hash {
			if res.SHA256, err = e.hashOf(r.dataFD(), res); err != nil {
				return fail(m, err)
			}
		}
		res.Duration = time.Since(start)
		dfd, err := eintr.Retry(func() (int, error) { return unix.FcntlInt(uintptr(dir.fd), unix.F_DUPFD_CLOEXEC, 0) })
		if err != nil {
			return fail(m, fmt.Errorf("dup directory descriptor: %w", err))
		}
		r.mu.Lock()
		r.dir = destDir{fd: dfd, path: dir.path}
		r.res = res
		r.mu.Unlock()
		if e.sidecar {
			if res.Sidecar, err = e.writeSidecar(r, d, res, false, false); err != nil {
				// The data is safe; a missing sidecar is worth a warning only.
				e.log.Warn("sidecar not written", logging.Path("rescued_to", []byte(res.Path)), zap.Error(err))
			}
			r.mu.Lock()
			r.res = res
			r.mu.Unlock()
		}
		return r, nil
	}
	if d.NoRoomToCopy != "" {
		// The copy, which would have worked, was left out for want of
		// space: the file did not fit.
		return fail("", fmt.Errorf("%w: %s (%s)", ErrNoSpace, d.NoRoomToCopy, strings.Join(skipped, "; ")))
	}
	return fail("", fmt.Errorf("%w: %s", ErrUnsupported, strings.Join(skipped, "; ")))
}

// attempt runs method m on src, the file open as that descriptor, into
// dir under the name nm chooses. It returns the Result (without Method)
// and the new file, kept open (nil after a link, which makes none), or an
// error wrapping errNotHere when m does not work here.
func (e *Engine) attempt(ctx context.Context, m Method, src int, dir destDir, nm namer, minFree uint64, progress func()) (Result, *os.File, error) {
	switch m {
	case MethodLink:
		res, err := e.link(src, dir, nm)
		return res, nil, err
	case MethodReflink:
		return e.reflink(src, dir, nm)
	case MethodCopy:
		return e.copy(ctx, src, dir, nm, minFree, progress)
	}
	return Result{}, nil, fmt.Errorf("%w: unknown method %q", errNotHere, m)
}

// link gives the inode itself a name (linkat(2)). ENOENT means the kernel
// will not link an inode without links (and not an O_TMPFILE), EPERM that
// protected_hardlinks forbids it for us: both move down the ladder, like
// EXDEV for a destination on another mount.
func (e *Engine) link(src int, dir destDir, nm namer) (Result, error) {
	name, err := nm.place(dir, func(name string) error { return linkFD(e.procRoot, src, dir.fd, name) })
	if err != nil {
		if notHere(err) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPERM) {
			return Result{}, fmt.Errorf("%w: link: %w", errNotHere, err)
		}
		return Result{}, spaceErr(fmt.Errorf("link into %s: %w", dir.path, err))
	}
	if err := eintr.Retry0(func() error { return unix.Fsync(dir.fd) }); err != nil {
		_ = unix.Unlinkat(dir.fd, name, 0)
		return Result{}, fmt.Errorf("fsync directory %s: %w", dir.path, err)
	}
	st, err := fstat(src)
	if err != nil {
		return Result{}, fmt.Errorf("fstat source: %w", err)
	}
	return Result{Path: dir.path + "/" + name, Bytes: st.Size}, nil
}

// spaceGuard checks, during a copy, that need more bytes still leave
// minFree free (nil without a minimum).
func spaceGuard(dir destDir, minFree uint64) func(need uint64) error {
	if minFree == 0 {
		return nil
	}
	return func(need uint64) error { return checkSpace(dir, need, minFree) }
}

// checkSpace refuses up front a rescue that needs need bytes when that
// would leave less than minFree.
func checkSpace(dir destDir, need, minFree uint64) error {
	if minFree == 0 {
		return nil
	}
	free, err := freeBytes(dir.fd)
	if err != nil {
		return fmt.Errorf("statfs %s: %w", dir.path, err)
	}
	if free < need || free-need < minFree {
		return fmt.Errorf("%w: %d bytes free in %s, rescue needs %d and must leave %d", ErrNoSpace, free, dir.path, need, minFree)
	}
	return nil
}

// reflink clones the source's extents into a new file (ioctl_ficlone(2)).
// The clone is a consistent snapshot of the whole file at that instant.
// It takes no data blocks, so min_free does not hold it back (README: link
// and reflink still run below min_free); a real ENOSPC is still reported.
func (e *Engine) reflink(src int, dir destDir, nm namer) (Result, *os.File, error) {
	t, err := e.createTemp(dir, nm.leaf)
	if err != nil {
		return Result{}, nil, err
	}
	if err := ficlone(t.fd(), src); err != nil {
		t.discard()
		if notHere(err) {
			return Result{}, nil, fmt.Errorf("%w: FICLONE: %w", errNotHere, err)
		}
		return Result{}, nil, spaceErr(fmt.Errorf("FICLONE into %s: %w", dir.path, err))
	}
	st, err := fstat(src)
	if err != nil {
		t.discard()
		return Result{}, nil, fmt.Errorf("fstat source: %w", err)
	}
	return e.finishStat(src, t, nm, st)
}

// copy copies the bytes of src up to the size seen now, keeping holes.
func (e *Engine) copy(ctx context.Context, src int, dir destDir, nm namer, minFree uint64, progress func()) (Result, *os.File, error) {
	st, err := fstat(src)
	if err != nil {
		return Result{}, nil, fmt.Errorf("fstat source: %w", err)
	}
	// st_blocks counts what the source allocates: its data, not its holes.
	need := uint64(min(st.Blocks*512, st.Size))
	if err := checkSpace(dir, need, minFree); err != nil {
		return Result{}, nil, err
	}
	t, err := e.createTemp(dir, nm.leaf)
	if err != nil {
		return Result{}, nil, err
	}
	c := e.newCopier(t.fd(), src, spaceGuard(dir, minFree), progress)
	c.prealloc = true // ftruncate below frees what a shrinking source leaves
	if _, err := c.copySparse(ctx, 0, st.Size); err != nil {
		t.discard()
		return Result{}, nil, err
	}
	// The final size: what was seen at the start, or less if the file was
	// truncated meanwhile. Setting it also keeps a trailing hole.
	now, err := fstat(src)
	if err != nil {
		t.discard()
		return Result{}, nil, fmt.Errorf("fstat source: %w", err)
	}
	size := min(st.Size, now.Size)
	if err := eintr.Retry0(func() error { return unix.Ftruncate(t.fd(), size) }); err != nil {
		t.discard()
		return Result{}, nil, spaceErr(fmt.Errorf("ftruncate copy to %d: %w", size, err))
	}
	return e.finishStat(src, t, nm, st)
}

// finishStat carries metadata from st, the source's, over to t and
// publishes it under the name nm chooses. The published file stays open
// and is returned (for Follow).
func (e *Engine) finishStat(src int, t *tmpFile, nm namer, st unix.Stat_t) (Result, *os.File, error) {
	if err := e.copyMeta(src, t.fd(), st); err != nil {
		t.discard()
		return Result{}, nil, err
	}
	size, err := fstat(t.fd())
	if err != nil {
		t.discard()
		return Result{}, nil, fmt.Errorf("fstat copy: %w", err)
	}
	name, err := e.publishAs(t, nm)
	if err != nil {
		return Result{}, nil, err
	}
	return Result{Path: t.dir.path + "/" + name, Bytes: size.Size}, t.f, nil
}

// hashOf reads the rescued file back and returns its SHA-256.
// fd reads it (Rescued.dataFD).
func (e *Engine) hashOf(fd int, r Result) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(readerAt(fd), 0, r.Bytes)); err != nil {
		return "", fmt.Errorf("hash %s: %w", r.Path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// readerAt reads a descriptor owned elsewhere with pread(2).
type readerAt int

func (fd readerAt) ReadAt(b []byte, off int64) (int, error) {
	n, err := eintr.Retry(func() (int, error) { return unix.Pread(int(fd), b, off) })
	if err != nil {
		return 0, err
	}
	if n == 0 && len(b) > 0 {
		return 0, io.EOF
	}
	return n, nil
}
