package daemon

import (
	"slices"
	"testing"
)

// TestViewsHostRoot: in container mode the host's trees are watched
// below the host root, and a directory there is named as the host sees
// it; other namespaces' views and other paths are left as they are.
func TestViewsHostRoot(t *testing.T) {
	v := newViews("/host/proc", "/host/")
	roots, changed := v.rootsLocked([]string{"/var/log", "/srv"})
	if want := []string{"/host/srv", "/host/var/log"}; !changed || !slices.Equal(roots, want) {
		t.Errorf("roots %v (changed %v), want %v", roots, changed, want)
	}
	for _, tt := range []struct{ name, dir, want string }{
		{"below the host root", "/host/var/log/app", "/var/log/app"},
		{"the host root", "/host", "/"},
		{"a sibling with the same prefix", "/hostile/x", "/hostile/x"},
		{"another namespace's view", "/host/proc/12/root/var/log", "/var/log"},
		{"the container's own path", "/etc/relinkd", "/etc/relinkd"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := v.viewOf(tt.dir); got != tt.want {
				t.Errorf("viewOf(%q) = %q, want %q", tt.dir, got, tt.want)
			}
		})
	}
}
