package relink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/logging"
)

// Follow keeps the rescued copy in step with a file that is still being
// written: every Options.FollowPoll it appends what the source gained
// (FICLONERANGE after a reflink, copy_file_range otherwise), until no
// process holds the inode open for writing. Then it fsyncs, copies the
// final timestamps, rewrites the sidecar, logs "follow finished" and
// returns the Result with the final Bytes and Followed set.
//
// It must follow a successful Rescue on the same pin. After a link there
// is nothing to copy (the name is the inode itself); Follow still waits
// for the last writer and reports the final size. Follow stops early, with
// what it has, when the source shrinks (a truncation, as by copytruncate
// log rotation). When ctx ends first it finishes the same way with what it
// has (fsync, timestamps, sidecar), logs "follow stopped" and returns that
// Result (Followed false) with ctx's error. It can run for as long as the
// writer lives: run it in its own goroutine.
func (e *Engine) Follow(ctx context.Context, p *Pin) (Result, error) {
	c := p.c
	p.mu.Lock()
	res, dst, rule := p.res, p.dst, p.rule
	p.mu.Unlock()
	fail := func(err error) (Result, error) {
		e.log.Error("rescue failed", logging.Path("path", c.Path), zap.Int("pid", c.PID), zap.Int("fd", c.FD),
			logging.Path("rescued_to", []byte(res.Path)), zap.String("op", "follow"), zap.Error(err))
		return res, &RescueError{Op: "follow", Method: res.Method, PID: c.PID, FD: c.FD, Path: res.Path, Err: err}
	}
	if res.Path == "" || p.fd < 0 {
		return fail(errors.New("follow needs a pin that was rescued and is still open"))
	}
	var cp *copier
	if dst != nil {
		cp = e.newCopier(int(dst.Fd()), p.fd, nil)
	}
	done := res.Bytes
	w := &writers{e: e, dev: c.Dev, ino: c.Ino}
	tick := time.NewTicker(e.poll)
	defer tick.Stop()
	var stopped error // ctx's error when ctx ended before the last writer
	reason := ""      // why the follow stopped early: shutdown or truncation
loop:
	for {
		// Look for writers before reading the size: a writer that has
		// closed the file has finished its writes, so the size read
		// after seeing no writer is final.
		busy, err := w.any()
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
			reason = "truncation"
			break loop
		}
		if st.Size > done {
			if cp != nil {
				if done, err = e.appendRange(ctx, cp, res.Method, done, st.Size); err != nil {
					if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
						stopped, reason = ctx.Err(), "shutdown"
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
			stopped, reason = ctx.Err(), "shutdown"
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
		if res.SHA256, err = e.hashOf(p, res); err != nil {
			return fail(err)
		}
	}
	if res.Sidecar != "" {
		if _, err := e.writeSidecar(p, Destination{Rule: rule}, res, true); err != nil {
			e.log.Warn("sidecar not updated", logging.Path("rescued_to", []byte(res.Path)), zap.Error(err))
		}
	}
	p.mu.Lock()
	p.res = res
	p.mu.Unlock()
	if reason != "" {
		e.log.Info("follow stopped", logging.Path("path", c.Path), logging.Path("rescued_to", []byte(res.Path)),
			zap.Int64("bytes", res.Bytes), zap.String("reason", reason))
	}
	if stopped != nil {
		return res, &RescueError{Op: "follow", Method: res.Method, PID: c.PID, FD: c.FD, Path: res.Path, Err: stopped}
	}
	if reason != "" {
		return res, nil
	}
	e.log.Info("follow finished", logging.Path("path", c.Path), logging.Path("rescued_to", []byte(res.Path)),
		zap.Int64("bytes", res.Bytes))
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

// writers finds processes that hold an inode open for writing. It first
// re-checks the descriptors where it found writers last time, which is the
// steady state of a long follow; only when none of those is left does it
// scan every /proc/PID/fd.
type writers struct {
	e        *Engine
	dev, ino uint64
	known    []fdRef
}

// fdRef is a descriptor below the proc root: dir is "PID", or
// "PID/task/TID" for a process whose main thread has exited.
type fdRef struct {
	dir string
	fd  int
}

func (w *writers) any() (bool, error) {
	for _, r := range w.known {
		if w.writes(r) {
			return true, nil
		}
	}
	w.known = w.known[:0]
	d, err := os.Open(w.e.procRoot)
	if err != nil {
		return false, fmt.Errorf("list processes: %w", err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return false, fmt.Errorf("list processes: %w", err)
	}
	for _, name := range names {
		if _, err := strconv.Atoi(name); err != nil {
			continue
		}
		dir := name
		fds, err := readDirNames(w.e.procRoot + "/" + dir + "/fd")
		if err != nil {
			continue // gone, or not ours to look at
		}
		if len(fds) == 0 {
			// A leader that has exited leaves the table to its
			// threads (see scanner.Candidate.TID).
			if dir = w.liveThread(name); dir == "" {
				continue
			}
			if fds, err = readDirNames(w.e.procRoot + "/" + dir + "/fd"); err != nil {
				continue
			}
		}
		for _, f := range fds {
			fd, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			if r := (fdRef{dir, fd}); w.writes(r) {
				w.known = append(w.known, r)
			}
		}
	}
	return len(w.known) > 0, nil
}

// liveThread returns "PID/task/TID" for a thread of pid other than its
// leader, "" if there is none.
func (w *writers) liveThread(pid string) string {
	tids, err := readDirNames(w.e.procRoot + "/" + pid + "/task")
	if err != nil {
		return ""
	}
	for _, tid := range tids {
		if tid != pid {
			return pid + "/task/" + tid
		}
	}
	return ""
}

// writes reports whether r refers to the inode and was opened for writing
// (flags in /proc/PID/fdinfo/FD, proc(5)).
func (w *writers) writes(r fdRef) bool {
	base := w.e.procRoot + "/" + r.dir
	var st unix.Stat_t
	if unix.Stat(base+"/fd/"+strconv.Itoa(r.fd), &st) != nil || uint64(st.Dev) != w.dev || st.Ino != w.ino {
		return false
	}
	b, err := os.ReadFile(base + "/fdinfo/" + strconv.Itoa(r.fd))
	if err != nil {
		return false
	}
	flags, err := parseFdinfoFlags(b)
	return err == nil && flags&unix.O_ACCMODE != unix.O_RDONLY
}

func readDirNames(path string) ([]string, error) {
	d, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}

// parseFdinfoFlags returns the octal "flags:" field of /proc/PID/fdinfo/FD.
func parseFdinfoFlags(b []byte) (uint32, error) {
	for _, line := range bytes.Split(b, []byte("\n")) {
		v, ok := bytes.CutPrefix(line, []byte("flags:"))
		if !ok {
			continue
		}
		f, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 8, 32)
		if err != nil {
			return 0, fmt.Errorf("fdinfo flags %q: %w", v, err)
		}
		return uint32(f), nil
	}
	return 0, errors.New("fdinfo has no flags line")
}
