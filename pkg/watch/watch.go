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

	"github.com/relinkd/relinkd/internal/procfs"
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
	// OnChange, when set, is called with the number of watches each time
	// it changes, so that a gauge never lags behind. It runs with the
	// Watcher's lock held: it must be quick and must not call the Watcher.
	OnChange func(watches int)
	// ProcRoot is where procfs is mounted, for the mount table that
	// tells filesystems with a server apart; "" means /proc.
	ProcRoot string
}

// Event says that a name went away in Dir: unlinked or renamed out. An
// Overflow event (Dir and Name empty) says instead that the kernel's queue
// overflowed and events were lost: removals, and new directories that are
// therefore not watched (see Rescan).
type Event struct {
	Dir      string
	Name     string
	Overflow bool
	// Created is set for a file created in (or moved into) Dir: not a
	// removal, but a file whose holder no earlier look has seen.
	Created bool
	// Also holds the directory's other names: the same inode watched
	// under two paths (a bind mount, or a container's view of a host
	// directory) is one watch, and one event, for both.
	Also []string
	At   time.Time // when the event was read from the kernel
}

// Watcher watches directory trees for removals.
type Watcher struct {
	log      *zap.Logger
	max      int
	in       *os.File
	onChange func(int)
	proc     procfs.FS

	mu     sync.Mutex
	roots  []string
	byWd   map[int][]string // every name of the watched directory, in the order added
	byPath map[string]int
	// Watches made for other mount namespaces' views (PROC/PID/root/…)
	// alone, by view: any user who can make a mount namespace can fill
	// a view with directories, so views get a share of the maximum and
	// each view a smaller one, and the host's trees keep the rest.
	viewOf    map[int]string // watch -> the view it was made for
	viewCount map[string]int
	viewsFull bool // a share was reached (logged once until SetRoots)
	added     int  // watches added so far (for Rescan's count)
	limited   bool // the max or the kernel limit was hit (logged once)
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
		log:       log,
		max:       opt.MaxWatches,
		in:        in,
		onChange:  opt.OnChange,
		proc:      procfs.New(opt.ProcRoot),
		byWd:      make(map[int][]string),
		viewOf:    make(map[int]string),
		viewCount: make(map[string]int),
		byPath:    make(map[string]int),
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

// SetRoots replaces the watched trees: watches outside every new root are
// removed, new roots are added. It is how a configuration reload applies,
// and how a container's views are added and dropped. Only the new roots
// are walked (all of them once the watch maximum or the views' share was
// hit, since dropped watches may have made room): the trees already
// watched are kept up to date by their events and by RestoreRoots, and
// walking every tree again each time a namespace comes or goes would cost
// the caller milliseconds.
func (w *Watcher) SetRoots(roots []string) {
	roots = Minimal(roots)
	w.mu.Lock()
	old := w.roots
	if w.limited || w.viewsFull {
		old = nil
	}
	w.roots = roots
	for path, wd := range w.byPath {
		if !underAny(path, roots) {
			w.dropLocked(path, wd)
		}
	}
	w.limited, w.viewsFull = false, false
	w.mu.Unlock()
	tables := make(map[string]mountTable)
	for _, r := range roots {
		if slices.Contains(old, r) {
			continue
		}
		if fstype, server := w.tableFor(r, tables).onServerFS(r); server {
			w.log.Info("watched root is on a filesystem with a server, not watched (a hung server would stall the watch); the sweeps cover it",
				zap.String("dir", r), zap.String("fstype", fstype))
			continue
		}
		if _, ok := devOf(r); !ok {
			w.log.Info("watched root does not exist; watched once it appears, from the next full sweep", zap.String("dir", r))
			continue
		}
		w.addTree(r, false)
	}
}

// RestoreRoots watches again every root that is not watched: one that was
// missing at start-up, or removed (and maybe re-created) since. The kernel
// drops a watch whose directory is removed (IN_IGNORED), and nothing
// reports a directory appearing outside the watched trees, so the daemon
// calls this on each full sweep. A root that exists is added again, one
// inotify_add_watch(2) each: a new watch descriptor means the directory
// was replaced, and its tree is walked. It returns the roots restored.
func (w *Watcher) RestoreRoots() []string {
	w.mu.Lock()
	roots := slices.Clone(w.roots)
	w.mu.Unlock()
	var restored []string
	tables := make(map[string]mountTable)
	for _, r := range roots {
		if _, server := w.tableFor(r, tables).onServerFS(r); server {
			continue
		}
		if _, ok := devOf(r); !ok {
			continue
		}
		w.mu.Lock()
		old, watched := w.byPath[r]
		w.mu.Unlock()
		w.add(r, true)
		w.mu.Lock()
		cur, ok := w.byPath[r]
		w.mu.Unlock()
		if !ok || (watched && cur == old) {
			continue
		}
		w.rescanTree(r)
		w.log.Info("watching root", zap.String("dir", r))
		restored = append(restored, r)
	}
	return restored
}

// Rescan walks every root again after events were lost (IN_Q_OVERFLOW):
// directories created meanwhile get their watch, and directories removed
// or replaced lose their stale one (their IN_IGNORED may have been lost
// too). It returns the number of watches added.
func (w *Watcher) Rescan() int { return w.rescan(func(string) bool { return true }) }

// RescanUnder walks again the roots at or below prefix, as Rescan does:
// the caller knows that mounts changed there (a container's view, whose
// runtime mounted its own directories over what was watched), so a path
// now naming another directory gets that directory's watch.
func (w *Watcher) RescanUnder(prefix string) int {
	return w.rescan(func(r string) bool { return underAny(r, []string{prefix}) })
}

// rescan walks again the roots that pick chooses and returns the number
// of watches added.
func (w *Watcher) rescan(pick func(root string) bool) int {
	w.mu.Lock()
	roots := slices.DeleteFunc(slices.Clone(w.roots), func(r string) bool { return !pick(r) })
	before := w.added
	w.mu.Unlock()
	for _, r := range roots {
		w.rescanTree(r)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.added - before
}

// rescanTree adds every directory of root's tree again (see add) and drops
// the watches of directories under it that are gone.
func (w *Watcher) rescanTree(root string) {
	w.addTree(root, true)
	w.mu.Lock()
	under := make(map[string]int)
	for path, wd := range w.byPath {
		if underAny(path, []string{root}) {
			under[path] = wd
		}
	}
	w.mu.Unlock()
	for path, wd := range under {
		// Only what is gone is dropped: a directory the walk did not
		// reach (watch maximum, no permission) keeps a watch that works.
		if st, err := os.Lstat(path); err == nil && st.IsDir() {
			continue
		}
		w.mu.Lock()
		if w.byPath[path] == wd {
			w.dropLocked(path, wd)
		}
		w.mu.Unlock()
	}
}

// Close stops the watcher; Run returns.
func (w *Watcher) Close() error { return w.in.Close() }

// Run reads events until ctx is done or the watcher is closed, sending
// removals and queue overflows to out. New subdirectories are watched as
// they appear.
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
		// inotify(7): the queue held fs.inotify.max_queued_events and
		// later events were dropped; the event's wd is -1.
		return Event{Overflow: true}, true
	}
	w.mu.Lock()
	names := slices.Clone(w.byWd[wd])
	if mask&unix.IN_IGNORED != 0 {
		// The directory was removed, or its filesystem unmounted; the
		// kernel dropped the watch.
		if len(names) > 0 {
			w.forgetLocked(wd)
			for _, dir := range names {
				if w.byPath[dir] == wd {
					delete(w.byPath, dir)
				}
				if slices.Contains(w.roots, dir) {
					w.log.Warn("watched root removed; watched again once it exists, from the next full sweep", zap.String("dir", dir))
				}
			}
		}
		w.mu.Unlock()
		return Event{}, false
	}
	w.mu.Unlock()
	if len(names) == 0 || name == "" {
		return Event{}, false
	}
	isDir := mask&unix.IN_ISDIR != 0
	switch {
	case isDir && mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
		// Under each of the parent's names, so that dropping one (a
		// container's view that ends) leaves the others watched.
		for _, dir := range names {
			path := filepath.Join(dir, name)
			w.addTree(path, false)
			w.log.Debug("watching new directory", zap.String("dir", path))
		}
		return Event{}, false
	case isDir && mask&unix.IN_MOVED_FROM != 0:
		// The subtree now lives under another name, maybe outside every
		// root: forget it; a move back in is an IN_MOVED_TO.
		w.mu.Lock()
		for _, dir := range names {
			path := filepath.Join(dir, name)
			for p, d := range w.byPath {
				if p == path || strings.HasPrefix(p, path+"/") {
					w.dropLocked(p, d)
				}
			}
		}
		w.mu.Unlock()
		return Event{}, false
	case !isDir && mask&(unix.IN_DELETE|unix.IN_MOVED_FROM) != 0:
		return Event{Dir: names[0], Name: name, Also: names[1:]}, true
	case !isDir && mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
		return Event{Dir: names[0], Name: name, Created: true, Also: names[1:]}, true
	}
	return Event{}, false
}

// addTree watches dir and every directory below it, within the bound.
// Symlinks are not followed; pseudo filesystems are not entered. With
// recheck, directories already watched are added again (see add).
func (w *Watcher) addTree(root string, recheck bool) {
	ms := w.tableFor(root, nil)
	if w.skipServerFS(ms, root) {
		return
	}
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
		if path != root && w.skipServerFS(ms, path) {
			return fs.SkipDir
		}
		if dev, ok := devOf(path); ok && dev != rootDev && pseudoFS(path) {
			return fs.SkipDir
		}
		if !w.add(path, recheck) {
			return fs.SkipAll
		}
		return nil
	})
}

// skipServerFS reports whether dir is on a filesystem with a server (see
// serverFS), saying so once per directory at debug level.
func (w *Watcher) skipServerFS(ms mountTable, dir string) bool {
	fstype, server := ms.onServerFS(dir)
	if server {
		w.log.Debug("not watching a directory on a filesystem with a server; the sweeps cover it",
			zap.String("dir", dir), zap.String("fstype", fstype))
	}
	return server
}

// add watches one directory; false means no more watches may be added.
// A directory already watched is skipped unless recheck is set: then it is
// added again, which for the same inode returns the same descriptor
// (inotify_add_watch(2) updates the existing watch), and for a directory
// replaced under the same name a new one, superseding the stale watch.
func (w *Watcher) add(dir string, recheck bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !underAny(dir, w.roots) {
		return true
	}
	old, watched := w.byPath[dir]
	if watched && !recheck {
		return true
	}
	if !watched && len(w.byWd) >= w.max {
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
	if watched && old == wd {
		return true
	}
	_, shared := w.byWd[wd]
	view := w.viewKey(dir)
	if !shared && view != "" {
		if !w.viewRoomLocked(view) {
			_ = rmWatch(w.in, wd)
			if watched {
				// Replaced (see below): the old watch is stale.
				w.dropLocked(dir, old)
			}
			return false
		}
		w.viewOf[wd] = view
		w.viewCount[view]++
	}
	if watched {
		// Replaced while its IN_IGNORED was lost: the old watch is on
		// a removed inode.
		w.dropLocked(dir, old)
	}
	// The same inode may be watched under other names already (a bind
	// mount, a container's view): one watch, which each name keeps.
	if !slices.Contains(w.byWd[wd], dir) {
		w.byWd[wd] = append(w.byWd[wd], dir)
	}
	w.byPath[dir] = wd
	w.added++
	w.changedLocked()
	return true
}

// changedLocked reports the number of watches to Options.OnChange.
func (w *Watcher) changedLocked() {
	if w.onChange != nil {
		w.onChange(len(w.byWd))
	}
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

// dropLocked forgets path as a name of watch wd, and removes the watch
// once it has no name left.
func (w *Watcher) dropLocked(path string, wd int) {
	delete(w.byPath, path)
	names := slices.DeleteFunc(w.byWd[wd], func(n string) bool { return n == path })
	if len(names) > 0 {
		w.byWd[wd] = names
		return
	}
	_ = rmWatch(w.in, wd)
	w.forgetLocked(wd)
}

// forgetLocked forgets watch wd, which the kernel no longer has.
func (w *Watcher) forgetLocked(wd int) {
	delete(w.byWd, wd)
	if view, ok := w.viewOf[wd]; ok {
		delete(w.viewOf, wd)
		if w.viewCount[view]--; w.viewCount[view] <= 0 {
			delete(w.viewCount, view)
		}
	}
	w.changedLocked()
}

// viewKey returns the view dir is in (PROC/PID/root), "" for the host's
// trees.
func (w *Watcher) viewKey(dir string) string {
	rest, ok := strings.CutPrefix(dir, w.proc.Root()+"/")
	if !ok {
		return ""
	}
	pid, after, _ := strings.Cut(rest, "/")
	if pid == "" || strings.Trim(pid, "0123456789") != "" || (after != "root" && !strings.HasPrefix(after, "root/")) {
		return ""
	}
	return w.proc.Root() + "/" + pid + "/root"
}

// viewRoomLocked reports whether view may have one more watch of its own:
// all views together at most half the maximum, one view at most an
// eighth. Reaching a share is said once until the next SetRoots.
func (w *Watcher) viewRoomLocked(view string) bool {
	total := 0
	for _, n := range w.viewCount {
		total += n
	}
	if total < w.max/2 && w.viewCount[view] < max(w.max/8, 1) {
		return true
	}
	if !w.viewsFull {
		w.viewsFull = true
		w.log.Warn("watches in other mount namespaces' views reached their share; directories beyond it rely on sweeps",
			zap.String("view", view), zap.Int("view_watches", w.viewCount[view]), zap.Int("views_watches", total),
			zap.Int("max", w.max))
	}
	return false
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
