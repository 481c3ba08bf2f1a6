package watch

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
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

// start runs a watcher on roots and returns its event channel.
func start(t *testing.T, opt Options) (*Watcher, <-chan Event) {
	t.Helper()
	w, err := New(opt, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
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
	return w, ch
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

// waitWatches polls until the watcher holds n watches (the watch on a new
// directory is added by the event loop, asynchronously).
func waitWatches(t *testing.T, w *Watcher, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for w.Watches() != n {
		if time.Now().After(deadline) {
			t.Fatalf("watches = %d, want %d", w.Watches(), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestRemovalEvents(t *testing.T) {
	root := t.TempDir()
	sub := filepath.Join(root, "a", "b")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	w, ch := start(t, Options{Roots: []string{root}})
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
		waitWatches(t, w, 5)
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
		waitWatches(t, w, 3)
	})
}

func TestMaxWatches(t *testing.T) {
	root := t.TempDir()
	for i := range 10 {
		if err := os.Mkdir(filepath.Join(root, string(rune('a'+i))), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	w, err := New(Options{Roots: []string{root}, MaxWatches: 4}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got := w.Watches(); got != 4 {
		t.Errorf("watches = %d, want 4", got)
	}
	if !w.Limited() {
		t.Error("Limited() = false, want true")
	}
}

func TestSetRoots(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	if err := os.Mkdir(filepath.Join(a, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	w, ch := start(t, Options{Roots: []string{a}})
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

func TestMissingRoot(t *testing.T) {
	w, err := New(Options{Roots: []string{filepath.Join(t.TempDir(), "absent")}}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got := w.Watches(); got != 0 {
		t.Errorf("watches = %d, want 0", got)
	}
}
