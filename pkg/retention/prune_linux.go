// Package retention is what relinkd keeps in a rescue root, on disk: the
// walk that finds its files without following a symlink or leaving the
// root, the rescued files and sidecars it lists, the bytes they take, and
// the prune that applies rescue.retention and rescue.max_total_size.
package retention

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/layout"
)

var errNotExist = os.ErrNotExist

// staleTemp is how long an engine temporary may stay unchanged before
// retention treats it as crash debris. A live copy changes it constantly.
const staleTemp = time.Hour

// Result says what a prune did.
type Result struct {
	StaleTemps   int    // engine temporaries a crash left behind, removed
	Removed      int    // rescued files removed (sidecars not counted)
	RemovedBytes uint64 // their sizes
	Kept         uint64 // bytes of relinkd's files left in the root
}

// kind is what retention makes of a file's name. A rescue root may be a
// directory that also holds other files (rescue.dirs: [/srv/backup]), so
// only the names the engine writes are ever removed or counted.
type kind int

const (
	foreign kind = iota // not written by relinkd: left alone, not counted
	rescuedFile
	sidecar
	temp
)

func kindOf(name string) kind {
	switch {
	case layout.IsTemp(name):
		return temp
	case layout.IsSidecar(name):
		return sidecar
	case layout.IsRescued(name):
		return rescuedFile
	}
	return foreign
}

// rescued is one regular file found under a rescue root.
type rescued struct {
	dirfd int    // open directory holding it (owned by the walk)
	name  string // name in that directory
	rel   string // path relative to the root, for ordering and logs
	kind  kind
	size  uint64
	uid   uint32 // owner (a rescued file keeps its original owner)
	ctime time.Time
}

// dir is a directory found under a rescue root, as it was when the walk
// passed it.
type dir struct {
	fd     int // the directory, open (owned by the walk)
	parent int // the open directory holding it
	name   string
	dev    uint64
	ino    uint64
	perm   uint32 // permission bits
	mtime  time.Time
}

// tree holds the directories a walk opened; close releases them.
type tree struct {
	fds  []int
	dirs []dir // every directory below the root, each before its children
}

func (t *tree) close() {
	for _, fd := range t.fds {
		unix.Close(fd)
	}
}

// walkRoot visits every regular file under root. It opens root with
// O_NOFOLLOW and descends with openat(O_NOFOLLOW|O_DIRECTORY), never
// following a symlink and never leaving root whatever is renamed meanwhile.
// The directory descriptors stay open until the tree is closed; the tree
// is never nil.
func walkRoot(root string, fn func(f rescued)) (*tree, error) {
	t := &tree{}
	rfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return t, fmt.Errorf("open rescue root %s: %w", root, errNotExist)
		}
		return t, fmt.Errorf("open rescue root %s: %w", root, err)
	}
	t.fds = append(t.fds, rfd)
	var walk func(dfd int, rel string, depth int) error
	walk = func(dfd int, rel string, depth int) error {
		if depth > 256 {
			return fmt.Errorf("walk %s/%s: too deep", root, rel)
		}
		// ReadDir on a dup so closing f leaves dfd open for unlinkat.
		dup, err := unix.FcntlInt(uintptr(dfd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("dup %s/%s: %w", root, rel, err)
		}
		f := os.NewFile(uintptr(dup), rel)
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return fmt.Errorf("read %s/%s: %w", root, rel, err)
		}
		slices.Sort(names)
		for _, name := range names {
			var st unix.Stat_t
			if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue
				}
				return fmt.Errorf("stat %s/%s: %w", root, join(rel, name), err)
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFREG:
				fn(rescued{dirfd: dfd, name: name, rel: join(rel, name), kind: kindOf(name), size: uint64(st.Size),
					uid: st.Uid, ctime: time.Unix(st.Ctim.Sec, st.Ctim.Nsec)})
			case unix.S_IFDIR:
				sub, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				if err != nil {
					if errors.Is(err, unix.ENOENT) {
						continue
					}
					return fmt.Errorf("open %s/%s: %w", root, join(rel, name), err)
				}
				t.fds = append(t.fds, sub)
				t.dirs = append(t.dirs, dir{fd: sub, parent: dfd, name: name, dev: st.Dev, ino: st.Ino,
					perm: st.Mode & 0o7777, mtime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec)})
				if err := walk(sub, join(rel, name), depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return t, walk(rfd, "", 0)
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// Usage returns the total size of relinkd's files under root (rescued
// files, sidecars and temporaries; other files are not counted), without
// following symlinks, and the bytes of rescued files by owner.
func Usage(root string) (uint64, map[uint32]uint64, error) {
	var n uint64
	owners := make(map[uint32]uint64)
	t, err := walkRoot(root, func(f rescued) {
		if f.kind != foreign {
			n += f.size
		}
		if f.kind == rescuedFile {
			owners[f.uid] += f.size
		}
	})
	t.close()
	return n, owners, err
}

// Prune removes rescued files under root: every one whose ctime (the time
// it was rescued; link, clone and metadata copy all set it) is older than
// maxAge (0: no age limit), then the oldest until the rest take at most
// maxTotal bytes (0: no limit): first those of owners who hold more than
// share bytes in root (0: no share), then anyone's. A file's sidecar (NAME+layout.SidecarSuffix)
// goes with it, and an orphaned sidecar is removed too. Only names the
// engine writes (see layout) are touched or counted: any other file is
// left alone. Symlinks are never followed and nothing outside root is
// touched. Directories the prune leaves empty are removed, root itself is
// kept.
func Prune(root string, maxAge time.Duration, maxTotal, share uint64, now time.Time) (Result, error) {
	var files, temps []rescued
	sidecars := map[string]rescued{} // by rel of the file they describe
	t, err := walkRoot(root, func(f rescued) {
		switch f.kind {
		case temp:
			temps = append(temps, f)
		case sidecar:
			sidecars[strings.TrimSuffix(f.rel, layout.SidecarSuffix)] = f
		case rescuedFile:
			files = append(files, f)
		}
	})
	defer t.close()
	if err != nil {
		if errors.Is(err, errNotExist) {
			return Result{}, nil
		}
		return Result{}, err
	}
	var res Result
	for _, f := range files {
		res.Kept += f.size
	}
	for _, s := range sidecars {
		res.Kept += s.size
	}
	for _, f := range temps {
		res.Kept += f.size
	}
	touched := map[int]bool{} // directories this prune removed something from, by fd
	remove := func(f rescued) error {
		if err := unix.Unlinkat(f.dirfd, f.name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("prune %s/%s: %w", root, f.rel, err)
		}
		touched[f.dirfd] = true
		res.Kept -= min(res.Kept, f.size)
		return nil
	}
	// Oldest first; the path breaks ties so the order is stable.
	slices.SortFunc(files, func(a, b rescued) int {
		if c := a.ctime.Compare(b.ctime); c != 0 {
			return c
		}
		return strings.Compare(a.rel, b.rel)
	})
	var errs []error
	// A hidden temporary is only ever half-written: the engine publishes
	// by linking it into place. One that has not changed for staleTemp was
	// left by a crash (O_TMPFILE files never need this).
	for _, f := range temps {
		if now.Sub(f.ctime) <= staleTemp {
			continue
		}
		if err := remove(f); err != nil {
			errs = append(errs, err)
			continue
		}
		res.StaleTemps++
	}
	owners := make(map[uint32]uint64)
	for _, f := range files {
		owners[f.uid] += f.size
	}
	gone := make(map[string]bool)
	drop := func(f rescued) {
		if err := remove(f); err != nil {
			errs = append(errs, err)
			return
		}
		gone[f.rel] = true
		owners[f.uid] -= min(owners[f.uid], f.size)
		res.Removed++
		res.RemovedBytes += f.size
		if s, ok := sidecars[f.rel]; ok {
			if err := remove(s); err != nil {
				errs = append(errs, err)
			}
			delete(sidecars, f.rel)
		}
	}
	for _, f := range files {
		if maxAge > 0 && now.Sub(f.ctime) > maxAge {
			drop(f)
		}
	}
	// Over max_total_size: the oldest files of owners over their share
	// go first, so that one user's junk does not push out everyone
	// else's rescues; then the oldest of anyone's.
	if share > 0 {
		for _, f := range files {
			if maxTotal == 0 || res.Kept <= maxTotal {
				break
			}
			if !gone[f.rel] && f.uid != 0 && owners[f.uid] > share {
				drop(f)
			}
		}
	}
	for _, f := range files {
		if maxTotal == 0 || res.Kept <= maxTotal {
			break
		}
		if !gone[f.rel] {
			drop(f)
		}
	}
	// A sidecar whose file is gone (removed by hand) is removed once old.
	have := map[string]bool{}
	for _, f := range files {
		have[f.rel] = true
	}
	for base, s := range sidecars {
		if !have[base] && maxAge > 0 && now.Sub(s.ctime) > maxAge {
			if err := remove(s); err != nil {
				errs = append(errs, err)
			}
		}
	}
	removeEmptyDirs(t, touched, now)
	return res, errors.Join(errs...)
}

// removeEmptyDirs removes empty directories of t, deepest first, without
// following symlinks: those this prune emptied (touched holds the ones it
// removed something from), and those left empty earlier that have the
// mode the engine creates (0700). Any other empty directory may belong to
// someone else sharing the root (a mount point, a drop directory) and is
// kept. Failures (a directory not empty, one that was just reused) are
// fine and ignored.
//
// A directory whose mtime was younger than staleTemp when the walk passed
// it is kept: the engine may have just created it for a rescue in
// progress, whose O_TMPFILE file (open(2)) has no name yet, so the
// directory looks empty; removing it would make the final linkat(2) fail
// with ENOENT. The mtime read before anything was removed is the one
// that counts, since this prune's own unlinks refresh it.
func removeEmptyDirs(t *tree, touched map[int]bool, now time.Time) {
	for i := len(t.dirs) - 1; i >= 0; i-- {
		d := t.dirs[i]
		mine := touched[d.fd] || d.perm == 0o700
		if !mine || now.Sub(d.mtime) <= staleTemp {
			continue
		}
		// Remove only the directory the walk saw, not one renamed into
		// its place since.
		var st unix.Stat_t
		if unix.Fstatat(d.parent, d.name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Dev != d.dev || st.Ino != d.ino {
			continue
		}
		// rmdir fails with ENOTEMPTY unless the directory is empty.
		if unix.Unlinkat(d.parent, d.name, unix.AT_REMOVEDIR) == nil {
			touched[d.parent] = true
		}
	}
}
