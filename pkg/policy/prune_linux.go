package policy

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

// PruneResult says what a prune did.
type PruneResult struct {
	StaleTemps   int    // engine temporaries a crash left behind, removed
	Removed      int    // rescued files removed (sidecars not counted)
	RemovedBytes uint64 // their sizes
	Kept         uint64 // bytes of rescued files left in the root
}

// rescued is one regular file found under a rescue root.
type rescued struct {
	dirfd int    // open directory holding it (owned by the walk)
	name  string // name in that directory
	rel   string // path relative to the root, for ordering and logs
	size  uint64
	ctime time.Time
}

// walkRoot visits every regular file under root. It opens root with
// O_NOFOLLOW and descends with openat(O_NOFOLLOW|O_DIRECTORY), never
// following a symlink and never leaving root whatever is renamed meanwhile.
// The directory descriptors stay open until done is called.
func walkRoot(root string, fn func(f rescued)) (done func(), err error) {
	var fds []int
	done = func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	rfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return done, fmt.Errorf("open rescue root %s: %w", root, errNotExist)
		}
		return done, fmt.Errorf("open rescue root %s: %w", root, err)
	}
	fds = append(fds, rfd)
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
				fn(rescued{dirfd: dfd, name: name, rel: join(rel, name), size: uint64(st.Size),
					ctime: time.Unix(st.Ctim.Sec, st.Ctim.Nsec)})
			case unix.S_IFDIR:
				sub, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				if err != nil {
					if errors.Is(err, unix.ENOENT) {
						continue
					}
					return fmt.Errorf("open %s/%s: %w", root, join(rel, name), err)
				}
				fds = append(fds, sub)
				if err := walk(sub, join(rel, name), depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return done, walk(rfd, "", 0)
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// DiskUsage returns the total size of the rescued files under root
// (sidecars included), without following symlinks.
func DiskUsage(root string) (uint64, error) {
	var n uint64
	done, err := walkRoot(root, func(f rescued) { n += f.size })
	done()
	return n, err
}

// Prune removes rescued files under root: every one whose ctime (the time
// it was rescued; link, clone and metadata copy all set it) is older than
// maxAge (0: no age limit), then the oldest until the rest take at most
// maxTotal bytes (0: no limit). A file's sidecar (NAME+SidecarSuffix)
// goes with it, and an orphaned sidecar is removed too. Symlinks are never
// followed and nothing outside root is touched. Directories left empty are
// removed, root itself is kept.
func Prune(root string, maxAge time.Duration, maxTotal uint64, now time.Time) (PruneResult, error) {
	var files, temps []rescued
	sidecars := map[string]rescued{} // by rel of the file they describe
	done, err := walkRoot(root, func(f rescued) {
		if layout.IsTemp(f.name) {
			temps = append(temps, f)
			return
		}
		if base, ok := strings.CutSuffix(f.rel, SidecarSuffix); ok {
			sidecars[base] = f
			return
		}
		files = append(files, f)
	})
	defer done()
	if err != nil {
		if errors.Is(err, errNotExist) {
			return PruneResult{}, nil
		}
		return PruneResult{}, err
	}
	var res PruneResult
	for _, f := range files {
		res.Kept += f.size
	}
	for _, s := range sidecars {
		res.Kept += s.size
	}
	for _, f := range temps {
		res.Kept += f.size
	}
	remove := func(f rescued) error {
		if err := unix.Unlinkat(f.dirfd, f.name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("prune %s/%s: %w", root, f.rel, err)
		}
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
	for _, f := range files {
		old := maxAge > 0 && now.Sub(f.ctime) > maxAge
		over := maxTotal > 0 && res.Kept > maxTotal
		if !old && !over {
			continue
		}
		if err := remove(f); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Removed++
		res.RemovedBytes += f.size
		if s, ok := sidecars[f.rel]; ok {
			if err := remove(s); err != nil {
				errs = append(errs, err)
			}
			delete(sidecars, f.rel)
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
	removeEmptyDirs(root)
	return res, errors.Join(errs...)
}

// removeEmptyDirs removes empty directories below root, deepest first,
// without following symlinks. Failures (a directory not empty, one that
// was just reused) are fine and ignored.
func removeEmptyDirs(root string) {
	rfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(rfd)
	var sweep func(dfd int, depth int)
	sweep = func(dfd int, depth int) {
		if depth > 256 {
			return
		}
		dup, err := unix.FcntlInt(uintptr(dfd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return
		}
		f := os.NewFile(uintptr(dup), "dir")
		ents, err := f.ReadDir(-1)
		f.Close()
		if err != nil {
			return
		}
		for _, e := range ents {
			if !e.IsDir() { // DirEntry types come from lstat: a symlink is not a dir
				continue
			}
			sub, err := unix.Openat(dfd, e.Name(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				continue
			}
			sweep(sub, depth+1)
			unix.Close(sub)
			// rmdir fails with ENOTEMPTY unless the sweep emptied it.
			_ = unix.Unlinkat(dfd, e.Name(), unix.AT_REMOVEDIR)
		}
	}
	sweep(rfd, 0)
}
