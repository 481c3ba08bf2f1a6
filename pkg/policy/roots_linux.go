package policy

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/layout"
)

// KnownRoots returns every rescue root that may hold rescued files, as
// host paths (see Via): the configured rescue.dirs, then, with fs_dir set,
// the fs_dir at the mount point of every host mount where it exists, is
// on that very mount (not another one mounted in its place) and is a safe
// root (see checkRoot). Those are the roots Locate chooses, found from the
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
func (p *Policy) KnownRoots() ([]string, error) {
	out := slices.Clone(p.cfg.Rescue.Dirs)
	fsDir := p.cfg.Rescue.FSDir
	if fsDir == "" {
		return out, nil
	}
	host, err := p.host.mounts()
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
	for _, r := range p.probes.look(p.host.via, looks, p.log) {
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
// set, that can be a rescue root (checkRoot).
func lookRoot(via string, l rootLook) rootLook {
	var st unix.Stat_t
	if unix.Lstat(via+l.root, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return l
	}
	l.id = dirID{st.Dev, st.Ino}
	if l.mnt != 0 {
		if id, _, _, err := pathMount(via, l.root); err != nil || id != l.mnt || checkRoot(via, l.root) != nil {
			return l
		}
	}
	l.ok = true
	return l
}

// SidecarFile is a sidecar found under a rescue root, with the rescued
// file it sits beside. Nothing in it is checked against the engine's
// format yet (relink.ParseSidecar and Sidecar.Describes do that).
type SidecarFile struct {
	Root string // the rescue root, a host path
	Rel  string // the rescued file's path below Root
	Data []byte // the sidecar's content, at most layout.MaxSidecarSize bytes
	// The rescued file, as statx(2) saw it (not following a symlink):
	// BirthTime in ns since the epoch, 0 where the filesystem has none.
	Dev, Ino  uint64
	Size      int64
	BirthTime int64
	// Err says why Data is empty: the sidecar is too large or unreadable,
	// or no regular file of the rescued name is beside it.
	Err error
}

// ErrSidecarFile is wrapped by SidecarFile.Err.
var ErrSidecarFile = errors.New("sidecar not readable")

// Sidecars calls fn for every sidecar under root (a host path) whose name
// is one the engine writes (layout.IsSidecar), with the walk that
// retention uses: the root opened with O_NOFOLLOW, each level below it
// with openat(O_NOFOLLOW|O_DIRECTORY), so that no symlink is followed and
// nothing outside root is read. A sidecar is opened O_NOFOLLOW|O_NONBLOCK
// beneath its directory, must be a regular file and is read up to
// layout.MaxSidecarSize. A root that does not exist gives no call and no
// error.
func (p *Policy) Sidecars(root string, fn func(SidecarFile)) error {
	type found struct {
		dirfd int
		name  string
		rel   string
	}
	var sidecars []found
	have := make(map[string]bool) // rescued files, by rel
	t, err := walkRoot(p.host.via+root, func(f rescued) {
		switch f.kind {
		case sidecar:
			sidecars = append(sidecars, found{f.dirfd, f.name, f.rel})
		case rescuedFile:
			have[f.rel] = true
		}
	})
	defer t.close()
	if err != nil {
		if errors.Is(err, errNotExist) {
			return nil
		}
		return err
	}
	for _, s := range sidecars {
		sf := SidecarFile{Root: root, Rel: strings.TrimSuffix(s.rel, SidecarSuffix)}
		name := strings.TrimSuffix(s.name, SidecarSuffix)
		var st unix.Statx_t
		switch err := eintr.Retry0(func() error {
			return unix.Statx(s.dirfd, name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_SYNC_AS_STAT,
				unix.STATX_TYPE|unix.STATX_INO|unix.STATX_SIZE|unix.STATX_BTIME, &st)
		}); {
		case !have[sf.Rel]:
			sf.Err = fmt.Errorf("%w: %s/%s: no rescued file beside it", ErrSidecarFile, root, s.rel)
		case err != nil:
			sf.Err = fmt.Errorf("%w: %s/%s: %w", ErrSidecarFile, root, sf.Rel, err)
		case st.Mode&unix.S_IFMT != unix.S_IFREG:
			sf.Err = fmt.Errorf("%w: %s/%s is not a regular file", ErrSidecarFile, root, sf.Rel)
		default:
			sf.Dev, sf.Ino, sf.Size = unix.Mkdev(st.Dev_major, st.Dev_minor), st.Ino, int64(st.Size)
			if st.Mask&unix.STATX_BTIME != 0 {
				sf.BirthTime = st.Btime.Sec*1_000_000_000 + int64(st.Btime.Nsec)
			}
			if sf.Data, err = readSmall(s.dirfd, s.name, layout.MaxSidecarSize); err != nil {
				sf.Err = fmt.Errorf("%w: %s/%s: %w", ErrSidecarFile, root, s.rel, err)
			}
		}
		fn(sf)
	}
	return nil
}

// readSmall reads the regular file name in dirfd, refusing a symlink, a
// file of another type and one larger than limit.
func readSmall(dirfd int, name string, limit int) ([]byte, error) {
	fd, err := eintr.Retry(func() (int, error) {
		return unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	})
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("not a regular file (mode %#o)", st.Mode)
	}
	if st.Size > int64(limit) {
		return nil, fmt.Errorf("%d bytes, more than %d", st.Size, limit)
	}
	// One byte more than its size tells a file that grew meanwhile.
	b := make([]byte, st.Size+1)
	n := 0
	for n < len(b) {
		k, err := eintr.Retry(func() (int, error) { return unix.Read(fd, b[n:]) })
		if err != nil {
			return nil, err
		}
		if k == 0 {
			break
		}
		n += k
	}
	if n == len(b) {
		return nil, fmt.Errorf("grew while it was read (%d bytes at the start)", st.Size)
	}
	return b[:n], nil
}
