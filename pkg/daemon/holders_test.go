package daemon

import (
	"slices"
	"testing"

	"github.com/relinkd/relinkd/pkg/scanner"
)

// TestHolderIndex: a full look replaces everything, a look at some pids
// replaces what is known of them only, the bound holds, and underRoots
// keeps exactly the paths inside the roots.
func TestHolderIndex(t *testing.T) {
	x := newHolderIndex(4)
	x.replace([]scanner.Held{{PID: 1, Dir: "/var/log"}, {PID: 2, Dir: "/var/log"}, {PID: 2, Dir: "/srv"}})
	if got := sorted(x.pids("/var/log")); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("/var/log: %v", got)
	}
	x.update([]int{2}, []scanner.Held{{PID: 2, Dir: "/srv/a"}})
	if got := sorted(x.pids("/var/log")); !slices.Equal(got, []int{1}) {
		t.Errorf("/var/log after pid 2 moved: %v", got)
	}
	if got := x.pids("/srv"); len(got) != 0 {
		t.Errorf("/srv after pid 2 moved: %v", got)
	}
	x.update([]int{3}, []scanner.Held{{PID: 3, Dir: "/a"}, {PID: 3, Dir: "/b"}, {PID: 3, Dir: "/c"}, {PID: 3, Dir: "/d"}})
	if n, capped := x.size(); n != 4 || !capped {
		t.Errorf("size %d capped %v, want 4 true", n, capped)
	}
	x.replace(nil)
	if n, capped := x.size(); n != 0 || capped {
		t.Errorf("after an empty full look: %d %v", n, capped)
	}

	in := underRoots([]string{"/var/log", "/srv"})
	for path, want := range map[string]bool{
		"/var/log": true, "/var/log/x": true, "/var/logs/x": false, "/srv/a/b": true, "/sr": false, "/tmp/x": false,
	} {
		if got := in([]byte(path)); got != want {
			t.Errorf("underRoots(%q) = %v, want %v", path, got, want)
		}
	}
	if !underRoots([]string{"/"})([]byte("/anything")) {
		t.Error("root / keeps everything")
	}
}

func sorted(xs []int) []int { slices.Sort(xs); return xs }

// TestViewOf: a watched directory reached through /proc/PID/root is the
// path its namespace sees; anything else is left alone.
func TestViewOf(t *testing.T) {
	v := &views{procRoot: "/proc"}
	for dir, want := range map[string]string{
		"/proc/123/root/var/log/app": "/var/log/app",
		"/proc/123/root":             "/",
		"/proc/123/rootfs/x":         "/proc/123/rootfs/x",
		"/proc/self/root/x":          "/proc/self/root/x",
		"/var/log":                   "/var/log",
	} {
		if got := v.viewOf(dir); got != want {
			t.Errorf("viewOf(%q) = %q, want %q", dir, got, want)
		}
	}
}
