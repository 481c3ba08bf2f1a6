// Package watch reports, through inotify(7), the moment a name is removed
// from a watched directory tree, so that the daemon can look for its holder
// before the holder exits. Watches are not recursive in the kernel: the
// package adds every subdirectory itself, follows new ones as they appear,
// and stops at a configurable maximum or at the kernel's limit, after which
// the periodic sweep covers the rest.
package watch

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// DefaultMaxWatches bounds the watches one Watcher adds when
// Options.MaxWatches is 0. The kernel's own default per user
// (fs.inotify.max_user_watches) is 8192 on small hosts and higher on larger.
const DefaultMaxWatches = 8192

// Options configure a Watcher.
type Options struct {
	// Roots are the directory trees to watch (see Roots to derive them
	// from globs). A root that does not exist yet is skipped.
	Roots []string
	// MaxWatches bounds the number of directories watched; 0 means
	// DefaultMaxWatches.
	MaxWatches int
}

// Event says that a name went away in Dir: unlinked or renamed out.
// Dir is "" after an event-queue overflow, meaning "anything may have
// happened".
type Event struct {
	Dir  string
	Name string
	At   time.Time // when the event was read from the kernel
}

// Watcher watches directory trees for removals.
type Watcher struct {
	log *zap.Logger
	max int
	in  *os.File

	mu      sync.Mutex
	roots   []string
	byWd    map[int]string
	byPath  map[string]int
	limited bool // the max or the kernel limit was hit (logged once)
}

// New starts an inotify instance and watches opt.Roots.
func New(opt Options, log *zap.Logger) (*Watcher, error) {
	if log == nil {
		log = zap.NewNop()
	}
	in, err := inotifyInit()
	if err != nil {
		return nil, err
	}
	w := &Watcher{
		log:    log,
		max:    opt.MaxWatches,
		in:     in,
		byWd:   make(map[int]string),
		byPath: make(map[string]int),
	}
	if w.max <= 0 {
		w.max = DefaultMaxWatches
	}
	w.SetRoots(opt.Roots)
	return w, nil
}

// Watches returns the number of directories being watched.
func (w *Watcher) Watches() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.byWd)
}

// Limited reports whether some directories are not watched because the
// maximum or the kernel's limit was reached.
func (w *Watcher) Limited() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.limited
}

// SetRoots replaces the watched trees: watches outside every new root are
// removed, new roots are added. It is how a configuration reload applies.
func (w *Watcher) SetRoots(roots []string) {
	roots = Minimal(roots)
	w.mu.Lock()
	w.roots = roots
	for path, wd := range w.byPath {
		if !underAny(path, roots) {
			w.dropLocked(path, wd)
		}
	}
	w.limited = false
	w.mu.Unlock()
	for _, r := range roots {
		w.addTree(r)
	}
}

// Close stops the watcher; Run returns.
func (w *Watcher) Close() error { return w.in.Close() }

// Run reads events until ctx is done or the watcher is closed, sending
// removals to out. New subdirectories are watched as they appear.
func (w *Watcher) Run(ctx context.Context, out chan<- Event) error {
	stop := context.AfterFunc(ctx, func() { w.in.Close() })
	defer stop()
	// Room for a few hundred events per read; the kernel queues the rest
	// (fs.inotify.max_queued_events) and reports IN_Q_OVERFLOW past that.
	buf := make([]byte, 64<<10)
	for {
		n, err := w.in.Read(buf)
		at := time.Now()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
				return nil
			}
			return err
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			raw := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameStart := off + unix.SizeofInotifyEvent
			nameEnd := nameStart + int(raw.Len)
			if nameEnd > n {
				break
			}
			name := string(buf[nameStart:nameEnd])
			if i := strings.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			off = nameEnd
			ev, ok := w.handle(int(raw.Wd), raw.Mask, name)
			if !ok {
				continue
			}
			ev.At = at
			select {
			case out <- ev:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// handle updates the watch set for one kernel event and says whether it is
// a removal to report.
func (w *Watcher) handle(wd int, mask uint32, name string) (Event, bool) {
	if mask&unix.IN_Q_OVERFLOW != 0 {
		return Event{}, true
	}
	w.mu.Lock()
	dir, known := w.byWd[wd]
	if mask&unix.IN_IGNORED != 0 {
		// The directory was removed, or its filesystem unmounted; the
		// kernel dropped the watch.
		if known {
			delete(w.byWd, wd)
			if w.byPath[dir] == wd {
				delete(w.byPath, dir)
			}
		}
		w.mu.Unlock()
		return Event{}, false
	}
	w.mu.Unlock()
	if !known || name == "" {
		return Event{}, false
	}
	path := filepath.Join(dir, name)
	isDir := mask&unix.IN_ISDIR != 0
	switch {
	case isDir && mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
		w.addTree(path)
		w.log.Debug("watching new directory", zap.String("dir", path))
		return Event{}, false
	case isDir && mask&unix.IN_MOVED_FROM != 0:
		// The subtree now lives under another name, maybe outside every
		// root: forget it; a move back in is an IN_MOVED_TO.
		w.mu.Lock()
		for p, d := range w.byPath {
			if p == path || strings.HasPrefix(p, path+"/") {
				w.dropLocked(p, d)
			}
		}
		w.mu.Unlock()
		return Event{}, false
	case !isDir && mask&(unix.IN_DELETE|unix.IN_MOVED_FROM) != 0:
		return Event{Dir: dir, Name: name}, true
	}
	return Event{}, false
}

// addTree watches dir and every directory below it, within the bound.
// Symlinks are not followed; pseudo filesystems are not entered.
func (w *Watcher) addTree(root string) {
	rootDev, ok := devOf(root)
	if !ok {
		return
	}
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			// A directory that vanished or that we may not read: the
			// sweep still covers what is below it.
			if d != nil && d.IsDir() && path != root {
				return fs.SkipDir
			}
			return nil
		}
		if !d.IsDir() {
			return nil
		}
		if dev, ok := devOf(path); ok && dev != rootDev && pseudoFS(path) {
			return fs.SkipDir
		}
		if !w.add(path) {
			return fs.SkipAll
		}
		return nil
	})
}

// add watches one directory; false means no more watches may be added.
func (w *Watcher) add(dir string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !underAny(dir, w.roots) {
		return true
	}
	if _, ok := w.byPath[dir]; ok {
		return true
	}
	if len(w.byWd) >= w.max {
		w.limitLocked(dir, nil)
		return false
	}
	wd, err := addWatch(w.in, dir)
	if err != nil {
		if isLimit(err) {
			w.limitLocked(dir, err)
			return false
		}
		// Gone already, not a directory any more, or not permitted:
		// normal churn, the sweep covers it.
		w.log.Debug("cannot watch directory", zap.String("dir", dir), zap.Error(err))
		return true
	}
	if old, ok := w.byWd[wd]; ok && old != dir {
		// The same inode under a second name (bind mount): one watch.
		delete(w.byPath, old)
	}
	w.byWd[wd] = dir
	w.byPath[dir] = wd
	return true
}

func (w *Watcher) limitLocked(dir string, err error) {
	if w.limited {
		return
	}
	w.limited = true
	fields := []zap.Field{zap.String("dir", dir), zap.Int("watches", len(w.byWd)), zap.Int("max", w.max)}
	if err != nil {
		fields = append(fields, zap.Error(err))
		w.log.Warn("inotify watch limit reached (fs.inotify.max_user_watches); directories beyond it rely on sweeps", fields...)
		return
	}
	w.log.Warn("watch maximum reached; directories beyond it rely on sweeps", fields...)
}

func (w *Watcher) dropLocked(path string, wd int) {
	_ = rmWatch(w.in, wd)
	delete(w.byPath, path)
	if w.byWd[wd] == path {
		delete(w.byWd, wd)
	}
}

// StaticPrefix returns the directory part of glob before its first
// component holding a pattern character (* ? [ { \): "/var/log/**/*.log"
// gives "/var/log", "/srv/app-*/data" gives "/srv". A glob without any
// pattern gives its parent directory (the name may be a file).
func StaticPrefix(glob string) string {
	glob = filepath.Clean(glob)
	parts := strings.Split(glob, "/")
	static := parts[:0:0]
	for i, p := range parts {
		if strings.ContainsAny(p, "*?[{\\") {
			break
		}
		if i == len(parts)-1 {
			// The last component is a plain name: watch its directory.
			break
		}
		static = append(static, p)
	}
	dir := strings.Join(static, "/")
	if dir == "" {
		return "/"
	}
	return dir
}

// Roots returns the minimal set of directory trees covering globs.
func Roots(globs []string) []string {
	var roots []string
	for _, g := range globs {
		if !filepath.IsAbs(g) {
			continue
		}
		if !strings.ContainsAny(g, "*?[{\\") {
			// A plain path naming a directory means that tree.
			if st, err := os.Stat(g); err == nil && st.IsDir() {
				roots = append(roots, filepath.Clean(g))
				continue
			}
		}
		roots = append(roots, StaticPrefix(g))
	}
	return Minimal(roots)
}

// Minimal sorts dirs and drops those inside another.
func Minimal(dirs []string) []string {
	cleaned := make([]string, 0, len(dirs))
	for _, d := range dirs {
		cleaned = append(cleaned, filepath.Clean(d))
	}
	slices.Sort(cleaned)
	cleaned = slices.Compact(cleaned)
	var out []string
	for _, d := range cleaned {
		if !underAny(d, out) {
			out = append(out, d)
		}
	}
	return out
}

func underAny(path string, roots []string) bool {
	for _, r := range roots {
		if path == r || r == "/" || strings.HasPrefix(path, r+"/") {
			return true
		}
	}
	return false
}
