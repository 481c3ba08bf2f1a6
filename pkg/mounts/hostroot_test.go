package mounts

import (
	"fmt"
	"testing"
)

// TestMountsUnder: container mode's host mounts are relinkd's own mounts
// at or below the host root, named as the host names them.
func TestMountsUnder(t *testing.T) {
	ms := []Mount{
		{ID: 1, MountPoint: "/"},
		{ID: 2, MountPoint: "/host", Options: "ro"},
		{ID: 3, MountPoint: "/host/var/lib/relinkd", Options: "rw"},
		{ID: 4, MountPoint: "/hostile"},
		{ID: 5, MountPoint: "/host/proc"},
		{ID: 6, MountPoint: "/etc/relinkd"},
	}
	got := fmt.Sprint(mountsUnder(ms, "/host"))
	want := fmt.Sprint([]Mount{
		{ID: 2, MountPoint: "/", Options: "ro"},
		{ID: 3, MountPoint: "/var/lib/relinkd", Options: "rw"},
		{ID: 5, MountPoint: "/proc"},
	})
	if got != want {
		t.Errorf("mountsUnder:\n-want %s\n+got  %s", want, got)
	}
}
