package relink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/logging"
	"github.com/relinkd/relinkd/internal/procfs"
)

// Follow keeps the rescued copy in step with a file that is still being
// written: every Options.FollowPoll it appends what the source gained
// (FICLONERANGE after a reflink, copy_file_range otherwise), until no
// process holds the inode open for writing. Then it fsyncs, copies the
// final timestamps, rewrites the sidecar and returns the Result with the
// final Bytes and Followed set.
//
// After a link there is nothing to copy (the name is the inode itself); Follow
// still waits for the last writer and reports the final size. Follow stops
// early, with what it has, when the source shrinks (a truncation, as by
// copytruncate log rotation), and says so (Result.Stopped: StopTruncation).
// When ctx ends first it finishes the same way with what it has (fsync,
// timestamps, sidecar) and returns that Result (Followed false, Stopped
// StopShutdown) with ctx's error. A failure returns the Result as it was
// and a *RescueError (Op "follow"). Follow logs no event: its caller
// (pkg/pipeline) does. It can run for as long as the writer lives: run it
// in its own goroutine.
//
// The sidecar says "following" from the start of the follow until it
// finishes or stops at a truncation; a follow stopped by ctx, by a
// failure or by the end of the process leaves it so, and the next daemon
// resumes it (Adopt).
func (r *Rescued) Follow(ctx context.Context) (Result, error) {
	e, p := r.e, r.pin
	c := p.c
	r.mu.Lock()
	res, dst, rule, marked := r.res, r.dst, r.rule, r.following
	r.mu.Unlock()
	res.Stopped = "" // of an earlier follow of r, if any
	fail := func(err error) (Result, error) {
		return res, &RescueError{Op: "follow", Method: res.Method, PID: c.PID, FD: c.FD, Path: res.Path, Err: err}
	}
	if dst == nil && res.Method != MethodLink || p.fd < 0 {
		return fail(errors.New("follow of a rescue that was closed"))
	}
	if res.Sidecar != "" && !marked {
		if _, err := e.writeSidecar(r, Destination{Rule: rule}, res, true, true); err != nil {
			e.log.Warn("sidecar not updated", logging.Path("rescued_to", []byte(res.Path)), zap.Error(err))
		} else {
			r.mu.Lock()
			r.following = true
			r.mu.Unlock()
		}
	}
	var cp *copier
	if dst != nil {
		cp = e.newCopier(int(dst.Fd()), p.fd, nil, r.progress)
	}
	done := res.Bytes
	id := fileID{dev: c.Dev, ino: c.Ino}
	var known []fdRef
	var lost time.Time // when known was found to hold no writer
	tick := time.NewTicker(e.poll)
	defer tick.Stop()
	var stopped error // ctx's error when ctx ended before the last writer
	reason := ""      // why the follow stopped early: StopShutdown or StopTruncation
loop:
	for {
		// Look for writers before reading the size: a writer that has
		// closed the file has finished its writes, so the size read
		// after seeing no writer is final.
		busy, err := e.writers.busy(ctx, e.log, p.fd, id, &known, &lost)
		if ctx.Err() != nil {
			stopped, reason = ctx.Err(), StopShutdown
			break loop
		}
		if err != nil {
			return fail(err)
		}
		st, err := fstat(p.fd)
		if err != nil {
			return fail(fmt.Errorf("fstat pinned file: %w", err))
		}
		if e.hookPoll != nil {
			e.hookPoll(st.Size)
		}
		if st.Size < done {
			// Truncated (copytruncate rotation): what was copied is
			// kept; the writer goes on into a file we no longer mirror.
			reason = StopTruncation
			break loop
		}
		if st.Size > done {
			if cp != nil {
				if done, err = e.appendRange(ctx, cp, res.Method, done, st.Size); err != nil {
					if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
						stopped, reason = ctx.Err(), StopShutdown
						break loop
					}
					return fail(err)
				}
			} else {
				done = st.Size
			}
		}
		if !busy {
			break loop
		}
		select {
		case <-ctx.Done():
			// Shutting down: keep what was appended so far, durable
			// and described by the sidecar, and say so.
			stopped, reason = ctx.Err(), StopShutdown
			break loop
		case <-tick.C:
		}
	}
	if dst != nil {
		st, err := fstat(p.fd)
		if err == nil {
			err = futimens(int(dst.Fd()), st.Atim, st.Mtim)
		}
		if err == nil {
			err = eintr.Retry0(func() error { return unix.Fsync(int(dst.Fd())) })
		}
		if err != nil {
			return fail(spaceErr(fmt.Errorf("finish %s: %w", res.Path, err)))
		}
	} else if err := eintr.Retry0(func() error { return unix.Fsync(p.fd) }); err != nil {
		// After a link the name is the inode itself: make what the
		// writer added durable before reporting its final size.
		return fail(spaceErr(fmt.Errorf("finish %s: %w", res.Path, err)))
	}
	res.Bytes = done
	res.Followed = reason == ""
	if e.hash {
		var err error
		if res.SHA256, err = e.hashOf(r.dataFD(), res); err != nil {
			return fail(err)
		}
	}
	// Still following after a stop by ctx (shutdown): the writer may go
	// on, and the next daemon picks the follow up where this one stopped.
	following := stopped != nil
	if res.Sidecar != "" {
		if _, err := e.writeSidecar(r, Destination{Rule: rule}, res, true, following); err != nil {
			e.log.Warn("sidecar not updated", logging.Path("rescued_to", []byte(res.Path)), zap.Error(err))
		}
	}
	res.Stopped = reason
	r.mu.Lock()
	r.res = res
	r.following = following
	r.mu.Unlock()
	if stopped != nil {
		return res, &RescueError{Op: "follow", Method: res.Method, PID: c.PID, FD: c.FD, Path: res.Path, Err: stopped}
	}
	return res, nil
}

// appendRange brings dst from done up to size and returns the new size.
// After a reflink it clones from the block boundary at or below done to
// the source's EOF (FICLONERANGE needs block-aligned offsets; the block
// re-cloned holds the same bytes); where that does not work it copies.
func (e *Engine) appendRange(ctx context.Context, cp *copier, m Method, done, size int64) (int64, error) {
	if m == MethodReflink {
		st, err := fstat(cp.dst)
		if blk := int64(st.Blksize); err == nil && blk > 0 {
			if err := ficloneRange(cp.dst, cp.src, done/blk*blk); err == nil {
				now, err := fstat(cp.dst)
				if err != nil {
					return done, fmt.Errorf("fstat copy: %w", err)
				}
				return now.Size, nil
			} else if !notHere(err) {
				return done, spaceErr(fmt.Errorf("FICLONERANGE at %d: %w", done/blk*blk, err))
			} else {
				e.log.Debug("follow: FICLONERANGE not supported here, copying", zap.Int64("offset", done), zap.Error(err))
			}
		}
	}
	end, err := cp.copySparse(ctx, done, size)
	if err != nil && !(ctx.Err() != nil && errors.Is(err, ctx.Err())) {
		return done, err
	}
	// Cancelled part way: keep what was copied, sized to exactly that, so
	// that the file, the result and the sidecar agree. The size also
	// covers a trailing hole of the source.
	end = max(end, done)
	st, serr := fstat(cp.dst)
	if serr == nil && st.Size != end {
		serr = unix.Ftruncate(cp.dst, end)
	}
	if serr != nil {
		return done, spaceErr(fmt.Errorf("size copy to %d: %w", end, serr))
	}
	return end, err
}

// Writers tells whether some process holds an inode open for writing.
// It asks the kernel first, with a read lease on the pinned descriptor
// (openForWrite): two calls, whatever the host runs. Where no lease can
// be taken it searches /proc (the flags in /proc/PID/fdinfo/FD, proc(5)):
// a follow first re-checks the descriptors where a writer was found last
// time, the steady state of a long follow. Only when none of those is
// left is every /proc/PID/fd read, and that pass is shared by every
// follow of every engine given the same Writers that asks while it runs,
// so that thousands of followed files whose holders exit together cost a
// pass or two, not one each. It is safe for concurrent use.
type Writers struct {
	proc     procfs.FS
	scanOnly bool // never ask by lease (tests of the /proc search)

	refused sync.Once // the first lease refused is said in the log

	mu    sync.Mutex
	at    time.Time          // when the last pass started; zero: never
	found map[fileID][]fdRef // from that pass: writable descriptors by inode
}

type fileID struct{ dev, ino uint64 }

// fdRef is a descriptor below the proc root: dir is "PID", or
// "PID/task/TID" for a process whose main thread has exited.
type fdRef struct {
	dir string
	fd  int
}

// NewWriters returns a Writers for procfs at procRoot ("" means /proc).
func NewWriters(procRoot string) *Writers {
	return &Writers{proc: procfs.New(procRoot)}
}

// busy reports whether the inode id, pinned as fd, is open for writing
// somewhere. Where the kernel cannot be asked by lease, it re-checks the descriptors in known first, which it updates. When none of
// them writes any more, only a pass over /proc that started after that was
// noticed (at *lost) can tell that no other writer is left. Rather than
// start one at once, busy answers true and waits for the next poll: by
// then another follow may have run a pass that will do, so that follows
// losing their writers together (a burst of holders exiting) share
// passes, about one per poll interval.
func (w *Writers) busy(ctx context.Context, log *zap.Logger, fd int, id fileID, known *[]fdRef, lost *time.Time) (bool, error) {
	if !w.scanOnly {
		writing, ok, err := openForWrite(fd)
		if ok {
			return writing, err
		}
		w.refused.Do(func() {
			log.Info("follow: read lease refused, searching /proc for writers instead", zap.Error(err))
		})
	}
	for _, r := range *known {
		if w.writes(r, id) {
			*lost = time.Time{}
			return true, nil
		}
	}
	if lost.IsZero() {
		*lost = time.Now()
		return true, nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.at.Before(*lost) {
		if err := w.pass(ctx); err != nil {
			return false, err
		}
	}
	*known = (*known)[:0]
	for _, r := range w.found[id] {
		if w.writes(r, id) {
			*known = append(*known, r)
		}
	}
	if len(*known) == 0 {
		return false, nil
	}
	*lost = time.Time{}
	return true, nil
}

// pass reads every descriptor of every process once and keeps those
// open for writing on regular files. Call with w.mu held.
func (w *Writers) pass(ctx context.Context) error {
	start := time.Now()
	pids, err := w.proc.PIDs()
	if err != nil {
		return fmt.Errorf("list processes: %w", err)
	}
	found := make(map[fileID][]fdRef)
	for _, pid := range pids {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		dir := strconv.Itoa(pid)
		fds, err := w.proc.FDs(dir)
		if err != nil {
			continue // gone, or not ours to look at
		}
		if len(fds) == 0 {
			// A leader that has exited leaves the table to its
			// threads (see scanner.Candidate.TID).
			tid := w.proc.LiveThread(pid)
			if tid == 0 {
				continue
			}
			dir += "/task/" + strconv.Itoa(tid)
			if fds, err = w.proc.FDs(dir); err != nil {
				continue
			}
		}
		for _, fd := range fds {
			r := fdRef{dir, fd}
			if !w.writable(r) {
				continue
			}
			if id, ok := w.identity(r); ok {
				found[id] = append(found[id], r)
			}
		}
	}
	w.found, w.at = found, start
	return nil
}

// writes reports whether r still refers to the inode id, opened for
// writing.
func (w *Writers) writes(r fdRef, id fileID) bool {
	got, ok := w.identity(r)
	return ok && got == id && w.writable(r)
}

// writable reports whether r was opened for writing. fdinfo is read
// first: it costs no call into the file's filesystem.
func (w *Writers) writable(r fdRef) bool {
	fi, err := w.proc.FDInfo(r.dir, r.fd)
	return err == nil && fi.Flags&unix.O_ACCMODE != unix.O_RDONLY
}

// identity is the dev and ino of the regular file open as r. statx with
// AT_STATX_DONT_SYNC answers from cached attributes where the filesystem
// would otherwise ask a server (FUSE, NFS).
func (w *Writers) identity(r fdRef) (fileID, bool) {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, w.proc.Path(r.dir+"/fd/"+strconv.Itoa(r.fd)),
		unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE|unix.STATX_INO, &stx)
	if err != nil || stx.Mode&unix.S_IFMT != unix.S_IFREG {
		return fileID{}, false
	}
	return fileID{dev: unix.Mkdev(stx.Dev_major, stx.Dev_minor), ino: stx.Ino}, true
}
