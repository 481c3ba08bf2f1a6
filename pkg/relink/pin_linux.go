package relink

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// Pin is the engine's own descriptor on a candidate's inode. While it is
// open the data survives the holder's exit. Close releases it (and, after a
// rescue, the descriptors of its Rescued).
type Pin struct {
	c         scanner.Candidate // the pinned file, as scanner.Identify saw it through fd
	fd        int
	startTime uint64 // verified start time of the holder

	mu      sync.Mutex
	rescued *Rescued // what Rescue or Adopt made of the pin; nil before
}

// free reports, under p.mu, whether p is open and not rescued yet.
func (p *Pin) free() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fd < 0 || p.rescued != nil {
		return errors.New("pin is closed or already rescued")
	}
	return nil
}

// keep records r as what p was rescued as, so that Close releases it.
func (p *Pin) keep(r *Rescued) {
	p.mu.Lock()
	p.rescued = r
	p.mu.Unlock()
}

// Candidate returns the pinned file: the holder and descriptor of the
// candidate the pin was made from, with the name, inode, owner, size and
// mount taken from the engine's own descriptor once it was open
// (scanner.Identify). This, not the sweep's snapshot, is what rules,
// quotas and the rescue act on.
func (p *Pin) Candidate() scanner.Candidate { return p.c }

// FD is the engine's descriptor on the pinned inode (for callers that need
// to fstat or read it; do not close it).
func (p *Pin) FD() int { return p.fd }

// Close releases the pin. It is safe to call more than once.
func (p *Pin) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var err error
	if p.rescued != nil {
		err = p.rescued.closeFiles()
	}
	if p.fd >= 0 {
		if e := unix.Close(p.fd); err == nil {
			err = e
		}
		p.fd = -1
	}
	return err
}

// Pin opens the candidate's inode through /proc/PID/fd/N, then takes the
// file's identity from that one open file (scanner.Identify: fstat of the
// pin, the name from its link text, deleted-ness as a sweep judges it) and
// keeps the pin only if it is the candidate: the same name and the same
// regular file (dev, ino), still deleted, held by the same process (start
// time, proc(5) stat field 22).
//
// The order matters. A sweep reads a descriptor's name and its stat in two
// calls and the engine opens it in a third; a holder that flips the file
// behind the number with dup2(2) can make a sweep pair a deleted name the
// rules chose with the inode of any file it can open. Checking the pin
// against the candidate's dev and ino alone would then check it against
// the wrong file. Taking the name and the inode from the pinned descriptor
// itself leaves nothing to swap: both are the pinned file's, and they must
// match the candidate's, or the pin is refused.
//
// It fails with ErrVanished when the process or descriptor is gone,
// ErrIdentity when the process, the name, the inode or its deleted-ness
// changed, and ErrNotRegular for anything but a regular file, each inside
// a *RescueError.
func (e *Engine) Pin(c scanner.Candidate) (*Pin, error) {
	fail := func(err error) (*Pin, error) {
		if errors.Is(err, ErrVanished) {
			e.log.Debug("pin: vanished", zap.Int("pid", c.PID), zap.Int("fd", c.FD), zap.Error(err))
		}
		return nil, &RescueError{Op: "pin", PID: c.PID, FD: c.FD, Path: string(c.Path), Err: err}
	}
	// A memfd is a regular shmem file; its link text is the only cheap
	// tell. DESIGN.md: memfds are never opened for data.
	if bytes.HasPrefix(c.Path, []byte("/memfd:")) {
		return fail(fmt.Errorf("%w: memfd", ErrNotRegular))
	}
	start, err := e.startTime(c.PID)
	if err != nil {
		return fail(err)
	}
	if c.StartTime != 0 && start != c.StartTime {
		return fail(fmt.Errorf("%w: pid %d start time %d, candidate had %d", ErrIdentity, c.PID, start, c.StartTime))
	}
	link := e.procRoot + "/" + c.ProcDir() + "/fd/" + strconv.Itoa(c.FD)
	// Look before opening: opening a FIFO or a device has side effects.
	var st unix.Stat_t
	if err := eintr.Retry0(func() error { return unix.Stat(link, &st) }); err != nil {
		return fail(vanished("stat "+link, err))
	}
	if err := sameFile(st, c); err != nil {
		return fail(err)
	}
	fd, err := openPin(link)
	if err != nil {
		return fail(vanished("open "+link, err))
	}
	p := &Pin{fd: fd}
	pc, err := scanner.Identify(e.procRoot, &c, fd)
	if err != nil {
		p.Close()
		if errors.Is(err, scanner.ErrNotCandidate) {
			// It was a deleted regular file at the look before the open.
			return fail(fmt.Errorf("%w: the pinned file: %w", ErrIdentity, err))
		}
		return fail(fmt.Errorf("identify pinned %s: %w", link, err))
	}
	if err := sameIdentity(pc, c); err != nil {
		p.Close()
		return fail(err)
	}
	p.c = pc
	// The process must still be the one we looked at. If it has exited in
	// the meantime, the pin is still right: name, dev and ino matched on
	// our own descriptor, so the data is the candidate's.
	switch again, err := e.startTime(c.PID); {
	case err == nil && again != start:
		p.Close()
		return fail(fmt.Errorf("%w: pid %d start time changed from %d to %d", ErrIdentity, c.PID, start, again))
	case err != nil && !errors.Is(err, ErrVanished):
		p.Close()
		return fail(err)
	}
	p.startTime = start
	return p, nil
}

// sameFile checks that st is a regular file with the candidate's identity.
// Candidate.Dev is st_dev as stat(2) reports it. Another inode is an
// identity change even when it is not a regular file: the sweep saw a
// regular one, so the descriptor was swapped, and callers must not record
// the candidate's inode as a non-regular file.
func sameFile(st unix.Stat_t, c scanner.Candidate) error {
	if uint64(st.Dev) != c.Dev || st.Ino != c.Ino {
		return fmt.Errorf("%w: now dev %d ino %d, candidate had dev %d ino %d", ErrIdentity, st.Dev, st.Ino, c.Dev, c.Ino)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%w: mode %#o", ErrNotRegular, st.Mode)
	}
	return nil
}

// sameIdentity checks that the pinned file pc is the candidate c: the
// same inode under the same name.
func sameIdentity(pc, c scanner.Candidate) error {
	if pc.Dev != c.Dev || pc.Ino != c.Ino {
		return fmt.Errorf("%w: pinned dev %d ino %d, candidate had dev %d ino %d", ErrIdentity, pc.Dev, pc.Ino, c.Dev, c.Ino)
	}
	if !bytes.Equal(pc.Path, c.Path) {
		return fmt.Errorf("%w: pinned file is %q, candidate had %q", ErrIdentity, pc.Path, c.Path)
	}
	return nil
}

// vanished maps ENOENT and ESRCH to ErrVanished.
func vanished(op string, err error) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("%w: %s: %w", ErrVanished, op, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// startTime reads field 22 of /proc/PID/stat.
func (e *Engine) startTime(pid int) (uint64, error) {
	st, err := procfs.New(e.procRoot).Stat(pid)
	if err != nil {
		return 0, vanished("start time of pid "+strconv.Itoa(pid), err)
	}
	return st.StartTime, nil
}
