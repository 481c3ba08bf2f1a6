package mounts

import (
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// KnownRoots returns every rescue root that may hold rescued files, as
// host paths (see Via): the configured rescue.dirs, then, with fs_dir set,
// the fs_dir at the mount point of every host mount where it exists, is
// on that very mount (not another one mounted in its place) and is a safe
// root (see CheckRoot). Those are the roots Locate chooses, found from the
// host's mount table rather than from what was rescued since start-up, so
// that a restarted daemon knows them at once. A directory reached through
// several mounts (bind mounts) is listed once. Pseudo filesystems are not
// looked at (an lstat below an autofs mount point would mount it).
//
// Each mount is looked at in a goroutine of its own, for at most
// probeTimeout: a hung filesystem (a FUSE server that does not answer, a
// dead NFS server) leaves its root out instead of stalling the caller, and
// it is not looked at again while that look is still blocked, so a hung
// mount costs one blocked thread, not one per call. The error says why the
// mount table could not be read; the configured directories are returned
// even then.
func (h *Host) KnownRoots() ([]string, error) {
	out := slices.Clone(h.rc.Dirs)
	fsDir := h.rc.FSDir
	if fsDir == "" {
		return out, nil
	}
	host, err := h.view.mounts()
	if err != nil {
		return out, err
	}
	var looks []rootLook
	for _, d := range out {
		looks = append(looks, rootLook{root: d}) // only to know its inode
	}
	for i := range host {
		m := &host[i]
		if slices.Contains(pseudoFS, m.FSType) {
			continue
		}
		root := filepath.Join(m.MountPoint, fsDir)
		switch i := slices.IndexFunc(looks, func(l rootLook) bool { return l.root == root }); {
		case i < 0:
			looks = append(looks, rootLook{root: root, mnt: m.ID})
		case looks[i].mnt != 0:
			// A mount point listed twice: the later mount is on top
			// and hides the earlier one's fs_dir.
			looks[i].mnt = m.ID
		}
	}
	seen := make(map[dirID]bool)
	var found []string
	for _, r := range h.probes.look(h.view.via, looks, h.log) {
		switch {
		case !r.ok || seen[r.id]:
		case r.mnt == 0:
			seen[r.id] = true
		case !slices.Contains(out, r.root) && !slices.Contains(found, r.root):
			seen[r.id] = true
			found = append(found, r.root)
		}
	}
	slices.Sort(found)
	return append(out, found...), nil
}

// probeTimeout bounds one look at the candidate roots in KnownRoots.
const probeTimeout = 2 * time.Second

type dirID struct{ dev, ino uint64 }

// rootLook is one candidate root for KnownRoots and, once looked at, what
// was found: mnt is the mount it must be on (0 for a configured
// directory, which is listed whatever it is).
type rootLook struct {
	root string
	mnt  int
	ok   bool  // a directory that can be a root (see look)
	id   dirID // its inode
}

// probes runs KnownRoots' looks. It outlives a configuration reload
// (Inherit), since a blocked look does too. mu guards inflight.
type probes struct {
	mu       sync.Mutex
	inflight map[string]*lookCall // by via, root and mount
}

// lookCall is one look at a root, shared by every caller that wants it
// while it runs.
type lookCall struct {
	done chan struct{} // closed once res is set
	res  rootLook
}

func newProbes() *probes { return &probes{inflight: make(map[string]*lookCall)} }

// look looks at every candidate root at once and returns, in the order
// given, those whose look ended within probeTimeout. A root already being
// looked at (by a concurrent caller, or by a look still blocked since an
// earlier call) is not looked at again: the caller waits for that look
// within its own deadline.
func (pr *probes) look(via string, looks []rootLook, log *zap.Logger) []rootLook {
	calls := make([]*lookCall, len(looks))
	pr.mu.Lock()
	for i, l := range looks {
		key := via + "\x00" + l.root + "\x00" + strconv.Itoa(l.mnt)
		c := pr.inflight[key]
		if c == nil {
			c = &lookCall{done: make(chan struct{})}
			pr.inflight[key] = c
			go func() {
				c.res = lookRoot(via, l)
				pr.mu.Lock()
				delete(pr.inflight, key)
				pr.mu.Unlock()
				close(c.done)
			}()
		}
		calls[i] = c
	}
	pr.mu.Unlock()
	deadline := time.NewTimer(probeTimeout)
	defer deadline.Stop()
	var out []rootLook
	var slow []string
	late := false
	for i, c := range calls {
		if !late {
			select {
			case <-c.done:
				out = append(out, c.res)
				continue
			case <-deadline.C:
				late = true
			}
		}
		// Past the deadline: take what has ended, leave out the rest.
		select {
		case <-c.done:
			out = append(out, c.res)
		default:
			slow = append(slow, looks[i].root)
		}
	}
	if len(slow) > 0 {
		log.Warn("rescue roots on hung filesystems left out", zap.Strings("roots", slow), zap.Duration("timeout", probeTimeout))
	}
	return out
}

// lookRoot checks that l.root is a directory, on mount l.mnt when it is
// set, that can be a rescue root (CheckRoot).
func lookRoot(via string, l rootLook) rootLook {
	var st unix.Stat_t
	if unix.Lstat(via+l.root, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return l
	}
	l.id = dirID{st.Dev, st.Ino}
	if l.mnt != 0 {
		if id, _, _, err := pathMount(via, l.root); err != nil || id != l.mnt || CheckRoot(via, l.root) != nil {
			return l
		}
	}
	l.ok = true
	return l
}
