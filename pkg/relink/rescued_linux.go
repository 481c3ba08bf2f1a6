package relink

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Rescued is a pinned file that has a name again: what Rescue or Adopt
// made of a Pin. It owns the engine's descriptors on the rescued file (the
// copy; none after a link, where the name is the pinned inode itself) and
// on its directory (for the sidecar), which Follow appends to and
// rewrites. Only Rescue and Adopt make one, so a follow always has a
// rescued file to follow. Close, or the pin's Close, releases them and
// the pin.
type Rescued struct {
	e        *Engine
	pin      *Pin
	rule     string   // Destination.Rule of the rescue
	progress func()   // Destination.Progress, for the follow's copies
	orig     *Sidecar // for one Adopt took over: the earlier rescue's sidecar

	mu        sync.Mutex
	dst       *os.File // the published copy (reflink, copy); nil after a link or Close
	dir       destDir  // its directory; fd -1 after Close
	res       Result
	following bool // the sidecar says a follow is in progress (Sidecar.Following)
}

// Result returns the rescue's result, updated by Follow.
func (r *Rescued) Result() Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.res
}

// Close releases r's descriptors and its pin. It is safe to call more
// than once.
func (r *Rescued) Close() error { return r.pin.Close() }

// dataFD is a descriptor that reads the rescued data: the copy's, or the
// pin's after a link.
func (r *Rescued) dataFD() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dst != nil {
		return int(r.dst.Fd())
	}
	return r.pin.fd
}

// closeFiles closes the copy and the directory. The pin calls it from
// Close, with its own lock held.
func (r *Rescued) closeFiles() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var err error
	if r.dst != nil {
		err = r.dst.Close()
		r.dst = nil
	}
	if r.dir.fd >= 0 {
		if e := unix.Close(r.dir.fd); err == nil {
			err = e
		}
		r.dir.fd = -1
	}
	return err
}
