package relink

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
)

// defaultChunk bounds one copy_file_range call, so that cancellation and
// the free-space guard are checked at least this often, and is the unit in
// which writeback of the copy is started early (see startWriteback).
const defaultChunk = 8 << 20

// copier copies byte ranges from src to the same offsets in dst, in the
// kernel while it can and by pread/pwrite once the kernel says it cannot.
type copier struct {
	e        *Engine
	src, dst int
	guard    func(need uint64) error // room for need more bytes? before each reservation and after every chunk; may be nil
	kernel   bool                    // copy_file_range still worth trying
	prealloc bool                    // reserve each data range before copying it
	progress func()                  // called after each chunk; may be nil
	buf      []byte
}

func (e *Engine) newCopier(dst, src int, guard func(need uint64) error, progress func()) *copier {
	return &copier{e: e, src: src, dst: dst, guard: guard, kernel: true, progress: progress}
}

// copySparse copies [from, to) of src into dst, skipping holes (lseek(2)
// SEEK_DATA/SEEK_HOLE), so that a sparse source gives a sparse copy. It
// stops early and cleanly when src turns out to be shorter than to (it was
// truncated during the copy) and returns the offset it reached; the caller
// sets the final size.
func (c *copier) copySparse(ctx context.Context, from, to int64) (int64, error) {
	chunk := c.e.chunk
	if chunk <= 0 {
		chunk = defaultChunk
	}
	off := from
	for off < to {
		data, err := seekData(c.src, off)
		switch {
		case errors.Is(err, unix.ENXIO):
			// No data at or after off: a hole up to EOF, or EOF moved
			// below off (truncated meanwhile). Never report more than
			// the source now has, or a follow would append zeros the
			// file never held.
			st, serr := fstat(c.src)
			if serr != nil {
				return off, fmt.Errorf("fstat source: %w", serr)
			}
			return max(off, min(to, st.Size)), nil
		case err != nil:
			// SEEK_DATA unsupported: treat everything as data.
			data = off
		}
		if data >= to {
			return to, nil
		}
		hole, err := seekHole(c.src, data)
		if err != nil || hole > to {
			hole = to
		}
		if err := c.reserve(data, hole-data); err != nil {
			return data, err
		}
		for data < hole {
			if err := ctx.Err(); err != nil {
				return data, err
			}
			n, err := c.copyChunk(data, min(chunk, hole-data))
			if err != nil {
				return data, err
			}
			if n == 0 {
				// EOF before the size seen at the start: the file was
				// truncated during the copy. End here; the caller sizes
				// the copy from the source's current length.
				return data, nil
			}
			startWriteback(c.dst, data, n)
			data += n
			if c.e.hookChunk != nil {
				c.e.hookChunk(data)
			}
			if c.progress != nil {
				c.progress()
			}
			if c.guard != nil {
				if err := c.guard(0); err != nil {
					return data, err
				}
			}
		}
		off = hole
	}
	return to, nil
}

// reserve preallocates n bytes at off of dst when c.prealloc is set. The
// blocks then exist before the copy fills them: writeback allocates
// nothing, the extents come out contiguous, and a destination without the
// room fails before the range is copied (ENOSPC, EDQUOT). On ext4 over a
// disk this took the durable copy of 1 GiB from about 1.3 to 1.0 times
// plain cp, which does not fsync (bench/relink). A filesystem that cannot
// preallocate just copies. Blocks reserved past the end of a source
// truncated meanwhile are freed by the copy's final ftruncate(2).
func (c *copier) reserve(off, n int64) error {
	if !c.prealloc || n <= 0 {
		return nil
	}
	// Not past the free-space floor, not even for a moment: the whole
	// range is taken at once, and as root it could eat the reserved blocks.
	if c.guard != nil {
		if err := c.guard(uint64(n)); err != nil {
			return err
		}
	}
	err := preallocate(c.dst, off, n)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return spaceErr(fmt.Errorf("preallocate %d bytes at %d: %w", n, off, err))
	default:
		// EOPNOTSUPP, ENOSYS, EINVAL and the like: a hint we cannot give.
		c.e.log.Debug("preallocation unsupported, copying without", zap.Error(err))
		c.prealloc = false
		return nil
	}
}

// copyChunk copies up to n bytes at off and returns how many it copied,
// 0 at the source's EOF.
func (c *copier) copyChunk(off, n int64) (int64, error) {
	if c.kernel {
		w, err := copyRange(c.dst, c.src, off, int(n))
		switch {
		case err == nil:
			return int64(w), nil
		case errors.Is(err, unix.EXDEV), errors.Is(err, unix.EINVAL),
			errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS):
			// copy_file_range(2): the kernel cannot copy between these
			// files (some FUSE and special filesystems, or across
			// filesystem types); fall back to read/write from here on.
			c.e.log.Debug("copy_file_range unsupported, using read/write")
			c.kernel = false
		default:
			return 0, spaceErr(fmt.Errorf("copy_file_range at %d: %w", off, err))
		}
	}
	if c.buf == nil {
		c.buf = make([]byte, 1<<20)
	}
	b := c.buf[:min(n, int64(len(c.buf)))]
	r, err := eintr.Retry(func() (int, error) { return unix.Pread(c.src, b, off) })
	if err != nil {
		return 0, fmt.Errorf("read source at %d: %w", off, err)
	}
	for w := 0; w < r; {
		k, err := eintr.Retry(func() (int, error) { return unix.Pwrite(c.dst, b[w:r], off+int64(w)) })
		if err != nil {
			return 0, spaceErr(fmt.Errorf("write at %d: %w", off+int64(w), err))
		}
		w += k
	}
	return int64(r), nil
}
