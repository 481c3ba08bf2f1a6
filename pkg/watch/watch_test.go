package watch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/relinkd/relinkd/internal/testcontainer"
	"github.com/relinkd/relinkd/pkg/watch/watchtest"
)

func TestStaticPrefix(t *testing.T) {
	tests := []struct {
		name, glob, want string
	}{
		{"doublestar", "/var/log/**/*.log", "/var/log"},
		{"star in dir", "/srv/app-*/data/*.db", "/srv"},
		{"plain file", "/var/log/syslog", "/var/log"},
		{"root glob", "/**", "/"},
		{"brace", "/data/{a,b}/x", "/data"},
		{"question", "/tmp/x?/y", "/tmp"},
		{"top file", "/x.log", "/"},
		{"unclean", "/var//log/./**", "/var/log"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := StaticPrefix(tt.glob); got != tt.want {
				t.Errorf("StaticPrefix(%q) = %q, want %q", tt.glob, got, tt.want)
			}
		})
	}
}

func TestRoots(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name  string
		globs []string
		want  []string
	}{
		{"nested dropped", []string{"/var/log/**/*.log", "/var/log/nginx/*.log", "/var/lib/x/**"}, []string{"/var/lib/x", "/var/log"}},
		{"relative ignored", []string{"*.log", "/srv/**"}, []string{"/srv"}},
		{"existing dir without pattern", []string{dir}, []string{dir}},
		{"prefix is not parent", []string{"/var/log2/*", "/var/log/*"}, []string{"/var/log", "/var/log2"}},
		{"root swallows all", []string{"/**", "/var/log/*"}, []string{"/"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Roots(tt.globs); !slices.Equal(got, tt.want) {
				t.Errorf("Roots(%q):\n-want %q\n+got  %q", tt.globs, tt.want, got)
			}
		})
	}
}

// start runs a watcher on roots and returns its event channel and a
// channel that gets a token whenever the number of watches changes (after
// opt.OnChange, if set, saw it).
func start(t *testing.T, opt Options) (*Watcher, <-chan Event, <-chan struct{}) {
	t.Helper()
	changed := make(chan struct{}, 1)
	user := opt.OnChange
	opt.OnChange = func(n int) {
		if user != nil {
			user(n)
		}
		select {
		case changed <- struct{}{}:
		default: // a token is waiting already: it wakes the waiter too
		}
	}
	w, err := New(opt, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return w, run(t, w), changed
}

// run runs w until the test ends and returns its event channel.
func run(t *testing.T, w *Watcher) <-chan Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan Event, 64)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, ch) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return ch
}

// expect waits for an event for dir/name, ignoring others.
func expect(t *testing.T, ch <-chan Event, dir, name string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case ev := <-ch:
			if ev.Dir == dir && ev.Name == name {
				return
			}
		case <-deadline:
			t.Fatalf("no event for %s/%s", dir, name)
		}
	}
}

func mkfile(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitWatches waits until the watcher holds n watches (the watch on a new
// directory is added by the event loop, asynchronously), woken by each
// change of the count.
func waitWatches(t *testing.T, w *Watcher, changed <-chan struct{}, n int) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for w.Watches() != n {
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("watches = %d, want %d", w.Watches(), n)
		}
	}
}

func TestRemovalEvents(t *testing.T) {
	root := t.TempDir()
	sub := filepath.Join(root, "a", "b")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	w, ch, changed := start(t, Options{Roots: []string{root}})
	if got := w.Watches(); got != 3 {
		t.Fatalf("watches = %d, want 3 (root, a, a/b)", got)
	}

	t.Run("unlink in root", func(t *testing.T) {
		p := filepath.Join(root, "f1")
		mkfile(t, p)
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		expect(t, ch, root, "f1")
	})
	t.Run("unlink in subdirectory", func(t *testing.T) {
		p := filepath.Join(sub, "f2")
		mkfile(t, p)
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		expect(t, ch, sub, "f2")
	})
	t.Run("rename out", func(t *testing.T) {
		p := filepath.Join(sub, "f3")
		mkfile(t, p)
		if err := os.Rename(p, filepath.Join(t.TempDir(), "f3")); err != nil {
			t.Fatal(err)
		}
		expect(t, ch, sub, "f3")
	})
	t.Run("directory created after start", func(t *testing.T) {
		nd := filepath.Join(root, "new", "deeper")
		if err := os.MkdirAll(nd, 0o755); err != nil {
			t.Fatal(err)
		}
		waitWatches(t, w, changed, 5)
		p := filepath.Join(nd, "f4")
		mkfile(t, p)
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		expect(t, ch, nd, "f4")
	})
	t.Run("directory removed", func(t *testing.T) {
		if err := os.RemoveAll(filepath.Join(root, "new")); err != nil {
			t.Fatal(err)
		}
		waitWatches(t, w, changed, 3)
	})
}

func TestMaxWatches(t *testing.T) {
	root := t.TempDir()
	for i := range 10 {
		if err := os.Mkdir(filepath.Join(root, string(rune('a'+i))), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	core, logs := observer.New(zap.WarnLevel)
	w, err := New(Options{Roots: []string{root}, MaxWatches: 4}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got := w.Watches(); got != 4 {
		t.Errorf("watches = %d, want 4", got)
	}
	if n := logs.FilterMessage("watch maximum reached; directories beyond it rely on sweeps").Len(); n != 1 {
		t.Errorf("the maximum was said %d times, want once: %v", n, logs.All())
	}
}

func TestSetRoots(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	if err := os.Mkdir(filepath.Join(a, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	w, ch, _ := start(t, Options{Roots: []string{a}})
	if got := w.Watches(); got != 2 {
		t.Fatalf("watches = %d, want 2", got)
	}
	w.SetRoots([]string{b})
	if got := w.Watches(); got != 1 {
		t.Fatalf("after SetRoots: watches = %d, want 1", got)
	}
	// A removal in the old root is no longer reported; one in the new is.
	mkfile(t, filepath.Join(a, "old"))
	os.Remove(filepath.Join(a, "old"))
	mkfile(t, filepath.Join(b, "new"))
	os.Remove(filepath.Join(b, "new"))
	select {
	case ev := <-ch:
		if ev.Dir != b || ev.Name != "new" {
			t.Fatalf("event %+v, want %s/new", ev, b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event in the new root")
	}
}

// TestSetRootsLimited: SetRoots walks only new roots, except after the
// watch maximum was hit: then the kept roots get the room dropped ones left.
func TestSetRootsLimited(t *testing.T) {
	a, b, c := t.TempDir(), t.TempDir(), t.TempDir()
	for _, dir := range []string{a, b} {
		for _, sub := range []string{"s1", "s2"} {
			if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	first, second := a, b
	if b < a {
		first, second = b, a
	}
	w, err := New(Options{Roots: []string{a, b}, MaxWatches: 4}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got := w.Watches(); got != 4 {
		t.Fatalf("watches = %d, want 4 (the maximum)", got)
	}
	w.SetRoots([]string{second})
	if got := w.Watches(); got != 3 {
		t.Fatalf("after dropping %s: watches = %d, want 3 (all of %s, walked again)", first, got, second)
	}
	w.SetRoots([]string{second, c})
	if got := w.Watches(); got != 4 {
		t.Fatalf("after adding %s: watches = %d, want 4", c, got)
	}
}

// TestAliases: one directory watched under two names (a container's view
// of a host directory, through /proc/self/root here) is one watch. Its
// events carry both names, a directory created in it is watched under
// both, and dropping one name, in either order, leaves the other watched.
func TestAliases(t *testing.T) {
	for _, order := range []string{"view added last", "view added first"} {
		t.Run(order, func(t *testing.T) {
			host := t.TempDir()
			view := "/proc/self/root" + host
			first := []string{host}
			if order == "view added first" {
				first = []string{view}
			}
			w, ch, changed := start(t, Options{Roots: first})
			w.SetRoots([]string{host, view})
			if got := w.Watches(); got != 1 {
				t.Fatalf("watches = %d, want 1 (one inode)", got)
			}
			if err := os.Mkdir(filepath.Join(host, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			waitWatches(t, w, changed, 2)
			// The second name joins the same watch (the count does
			// not change): poll for it.
			var hostSub, viewSub bool
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				w.mu.Lock()
				_, hostSub = w.byPath[filepath.Join(host, "sub")]
				_, viewSub = w.byPath[filepath.Join(view, "sub")]
				w.mu.Unlock()
				if hostSub && viewSub {
					break
				}
			}
			if !hostSub || !viewSub {
				t.Errorf("new directory watched under the host's name %v, the view's %v; want both", hostSub, viewSub)
			}
			mkfile(t, filepath.Join(host, "a"))
			os.Remove(filepath.Join(host, "a"))
			ev := next(t, ch, false)
			if names := append([]string{ev.Dir}, ev.Also...); !slices.Contains(names, host) || !slices.Contains(names, view) {
				t.Errorf("event names %v, want %s and %s", names, host, view)
			}
			// The view goes (its container ended): the host's
			// directories stay watched.
			w.SetRoots([]string{host})
			if got := w.Watches(); got != 2 {
				t.Fatalf("after dropping the view: watches = %d, want 2", got)
			}
			mkfile(t, filepath.Join(host, "sub", "b"))
			os.Remove(filepath.Join(host, "sub", "b"))
			if ev := next(t, ch, false); ev.Dir != filepath.Join(host, "sub") || len(ev.Also) != 0 {
				t.Errorf("event %+v, want %s/sub under that name only", ev, host)
			}
		})
	}
}

// TestViewShare: the directories of another mount namespace's view that
// are its own (not the host's inodes under a second name) get at most an
// eighth of the maximum per view, so that a user who fills a view with
// directories cannot take the watches the host's trees need.
func TestViewShare(t *testing.T) {
	host, other := t.TempDir(), t.TempDir()
	for _, dir := range []string{host, other} {
		for _, sub := range []string{"a", "b", "c", "d", "e"} {
			if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A view's path is PROC/PID/root/…: our own pid's stands in for a
	// container's.
	view := fmt.Sprintf("/proc/%d/root%s", os.Getpid(), other)
	core, logs := observer.New(zap.WarnLevel)
	w, err := New(Options{Roots: []string{host}, MaxWatches: 16}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.SetRoots([]string{host, view})
	if got := w.Watches(); got != 6+2 {
		t.Errorf("watches = %d, want 8: the host's 6 and the view's share, 16/8", got)
	}
	if n := logs.FilterMessage("watches in other mount namespaces' views reached their share; directories beyond it rely on sweeps").Len(); n != 1 {
		t.Errorf("the share was said %d times, want once: %v", n, logs.All())
	}
	// A host directory created now still gets its watch.
	if err := os.Mkdir(filepath.Join(host, "f"), 0o755); err != nil {
		t.Fatal(err)
	}
	w.RestoreRoots()
	w.Rescan()
	if got := w.Watches(); got != 9 {
		t.Errorf("after a new host directory: watches = %d, want 9", got)
	}
	// The view gone, its share is free again.
	w.SetRoots([]string{host})
	if got := w.Watches(); got != 7 {
		t.Errorf("after dropping the view: watches = %d, want 7", got)
	}
}

// next returns the next event with Created == created, skipping others.
func next(t *testing.T, ch <-chan Event, created bool) Event {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case ev := <-ch:
			if ev.Created == created {
				return ev
			}
		case <-deadline:
			t.Fatal("no event")
		}
	}
}

// TestMissingRoot: a root missing at start-up is watched by the first
// RestoreRoots after it appears.
func TestMissingRoot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "absent")
	w, ch, _ := start(t, Options{Roots: []string{root}})
	if got := w.Watches(); got != 0 {
		t.Errorf("watches = %d, want 0", got)
	}
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := w.RestoreRoots(); !slices.Equal(got, []string{root}) {
		t.Errorf("RestoreRoots = %q, want [%s]", got, root)
	}
	p := filepath.Join(root, "f")
	mkfile(t, p)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, root, "f")
}

// counter records what Options.OnChange reports.
type counter struct {
	mu   sync.Mutex
	last int
	n    int // calls
}

func (c *counter) set(v int) {
	c.mu.Lock()
	c.last, c.n = v, c.n+1
	c.mu.Unlock()
}

func (c *counter) get() (last, calls int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last, c.n
}

// TestOnChange: the count is reported as soon as a watch is added or
// dropped, by events as well as by SetRoots.
func TestOnChange(t *testing.T) {
	root := t.TempDir()
	var c counter
	w, _, changed := start(t, Options{Roots: []string{root}, OnChange: c.set})
	if last, _ := c.get(); last != 1 {
		t.Fatalf("OnChange reported %d after New, want 1", last)
	}
	sub := filepath.Join(root, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	waitWatches(t, w, changed, 2)
	if last, _ := c.get(); last != 2 {
		t.Errorf("OnChange reported %d after a new directory, want 2", last)
	}
	if err := os.Remove(sub); err != nil {
		t.Fatal(err)
	}
	waitWatches(t, w, changed, 1)
	if last, _ := c.get(); last != 1 {
		t.Errorf("OnChange reported %d after the directory was removed, want 1", last)
	}
	w.SetRoots(nil)
	if last, _ := c.get(); last != 0 {
		t.Errorf("OnChange reported %d after SetRoots(nil), want 0", last)
	}
}

// TestOverflow: with a queue of 4 events and nobody reading, creating 50
// directories overflows it for sure. The overflow arrives as its own event
// (not as a removal), the directories whose IN_CREATE was dropped are not
// watched until Rescan, and then they all are.
func TestOverflow(t *testing.T) {
	root := t.TempDir()
	var c counter
	restore := watchtest.LowQueue(t, 4)
	w, err := New(Options{Roots: []string{root}, OnChange: c.set}, zaptest.NewLogger(t))
	restore()
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	var dirs []string
	for i := range n {
		d := filepath.Join(root, fmt.Sprintf("d%02d", i))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
	}
	ch := run(t, w)
	deadline := time.After(5 * time.Second)
	for overflow := false; !overflow; {
		select {
		case ev := <-ch:
			if !ev.Overflow {
				t.Fatalf("event %+v before the overflow, want only the overflow (no removal happened)", ev)
			}
			if ev.Dir != "" || ev.Name != "" {
				t.Errorf("overflow event %+v names a file", ev)
			}
			overflow = true
		case <-deadline:
			t.Fatal("no overflow event")
		}
	}
	// The 4 queued IN_CREATE events were handled before the overflow.
	if got := w.Watches(); got >= n+1 {
		t.Fatalf("watches = %d before Rescan, want fewer than %d (events were dropped)", got, n+1)
	}
	before := w.Watches()
	if added := w.Rescan(); added != n+1-before {
		t.Errorf("Rescan added %d watches, want %d", added, n+1-before)
	}
	if got := w.Watches(); got != n+1 {
		t.Fatalf("watches = %d after Rescan, want %d", got, n+1)
	}
	if last, _ := c.get(); last != n+1 {
		t.Errorf("OnChange reported %d, want %d", last, n+1)
	}
	// The last directory's watch works.
	p := filepath.Join(dirs[n-1], "f")
	mkfile(t, p)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, dirs[n-1], "f")
}

// TestRescanReplaced: a directory removed and re-created under the same
// name while its events were lost keeps a stale watch until Rescan, which
// replaces it; a directory that is gone loses its watch.
func TestRescanReplaced(t *testing.T) {
	root := t.TempDir()
	a, b := filepath.Join(root, "a"), filepath.Join(root, "b")
	for _, d := range []string{a, b} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	restore := watchtest.LowQueue(t, 0) // every event becomes an overflow
	w, err := New(Options{Roots: []string{root}}, zaptest.NewLogger(t))
	restore()
	if err != nil {
		t.Fatal(err)
	}
	ch := run(t, w)
	for _, d := range []string{a, b} {
		if err := os.Remove(d); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(a, 0o755); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-ch:
		if !ev.Overflow {
			t.Fatalf("event %+v, want an overflow", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no overflow event")
	}
	if got := w.Watches(); got != 3 {
		t.Fatalf("watches = %d with the IN_IGNORED events lost, want 3 (stale)", got)
	}
	if added := w.Rescan(); added != 1 {
		t.Errorf("Rescan added %d watches, want 1 (the new a)", added)
	}
	if got := w.Watches(); got != 2 {
		t.Errorf("watches = %d after Rescan, want 2 (root, new a)", got)
	}
}

// TestRootRecreated: a root that is removed loses its watch (the kernel
// drops it, IN_IGNORED); once re-created, RestoreRoots watches it and its
// tree again, and removals there are reported.
func TestRootRecreated(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	if err := os.MkdirAll(filepath.Join(root, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	var c counter
	w, ch, changed := start(t, Options{Roots: []string{root}, OnChange: c.set})
	if got := w.RestoreRoots(); got != nil {
		t.Errorf("RestoreRoots = %q with the root watched, want none", got)
	}
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	waitWatches(t, w, changed, 0)
	if last, _ := c.get(); last != 0 {
		t.Errorf("OnChange reported %d after the root was removed, want 0", last)
	}
	if got := w.RestoreRoots(); got != nil {
		t.Errorf("RestoreRoots = %q with the root absent, want none", got)
	}
	sub := filepath.Join(root, "sub")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := w.RestoreRoots(); !slices.Equal(got, []string{root}) {
		t.Errorf("RestoreRoots = %q, want [%s]", got, root)
	}
	if got := w.Watches(); got != 2 {
		t.Fatalf("watches = %d after RestoreRoots, want 2 (root, sub)", got)
	}
	if got := w.RestoreRoots(); got != nil {
		t.Errorf("second RestoreRoots = %q, want none", got)
	}
	p := filepath.Join(sub, "f")
	mkfile(t, p)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, sub, "f")
}

// TestViewMountTable: whether a view's directory is on a filesystem with
// a server is decided by the view's own namespace, whose mounts the
// daemon's table does not show: a container's NFS or FUSE mount at a
// watched path would otherwise be walked, and a hung server there would
// stall the walk.
func TestViewMountTable(t *testing.T) {
	dir := t.TempDir()
	cmd, _ := testcontainer.Unshare(t, []string{"--mount", "--propagation", "private"},
		"mount -t tmpfs tmpfs "+dir+" && echo ready && exec sleep 100")
	w, err := New(Options{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	view := fmt.Sprintf("/proc/%d/root", cmd.Process.Pid)
	mountedAt := func(tb mountTable, point string) string {
		for _, m := range tb.ms {
			if m.MountPoint == point {
				return m.FSType
			}
		}
		return ""
	}
	if got := mountedAt(w.tableFor(view+dir, nil), dir); got != "tmpfs" {
		t.Errorf("the view's table has %q at %s, want its own tmpfs", got, dir)
	}
	if got := mountedAt(w.tableFor(dir, nil), dir); got != "" {
		t.Errorf("the daemon's table has %q at %s, want nothing", got, dir)
	}

	// The decision, on a view's table with an NFS mount.
	nfs := mountTable{view: "/proc/9/root", ms: mounts{{MountPoint: "/", FSType: "ext4"}, {MountPoint: "/srv/nfs", FSType: "nfs4"}}}
	for _, tt := range []struct {
		path   string
		server bool
	}{
		{"/proc/9/root/srv/nfs", true},
		{"/proc/9/root/srv/nfs/logs", true},
		{"/proc/9/root/srv/nfsx", false},
		{"/proc/9/root/srv", false},
		{"/proc/9/root", false},
	} {
		if _, got := nfs.onServerFS(tt.path); got != tt.server {
			t.Errorf("onServerFS(%s) = %v, want %v", tt.path, got, tt.server)
		}
	}
	gone := mountTable{view: "/proc/9/root", err: os.ErrNotExist}
	if _, got := gone.onServerFS("/proc/9/root/srv"); !got {
		t.Error("a view whose table cannot be read is walked; want it left to the sweeps")
	}
}
