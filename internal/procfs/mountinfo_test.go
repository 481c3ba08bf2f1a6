package procfs

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseMountInfo(t *testing.T) {
	const data = `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
35 22 0:30 /sub /mnt/with\040space\011tab ro,nosuid master:2 shared:3 - btrfs /dev/my\134disk rw,subvol=/sub
40 22 0:45 / /proc rw - proc proc rw
`
	ms, err := ParseMountInfo(strings.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{ID: 22, Parent: 1, Major: 8, Minor: 1, Root: "/", MountPoint: "/", Options: "rw,relatime", FSType: "ext4", Source: "/dev/sda1"},
		{ID: 35, Parent: 22, Major: 0, Minor: 30, Root: "/sub", MountPoint: "/mnt/with space\ttab", Options: "ro,nosuid", FSType: "btrfs", Source: `/dev/my\disk`},
		{ID: 40, Parent: 22, Major: 0, Minor: 45, Root: "/", MountPoint: "/proc", Options: "rw", FSType: "proc", Source: "proc"},
	}
	if !reflect.DeepEqual(ms, want) {
		t.Errorf("-want %+v\n+got  %+v", want, ms)
	}
	if ms[0].ReadOnly() || !ms[1].ReadOnly() {
		t.Errorf("ReadOnly wrong")
	}
	for _, bad := range []string{
		"22 1 8:1 / / rw - ext4\n",              // no source after the type
		"22 1 8-1 / / rw - ext4 /dev/sda1 rw\n", // bad device
		"x 1 8:1 / / rw - ext4 /dev/sda1 rw\n",  // bad id
		"22 1 8:1 / / rw ext4 /dev/sda1 rw\n",   // no separator
	} {
		if _, err := ParseMountInfo(strings.NewReader(bad)); !errors.Is(err, ErrMountInfo) {
			t.Errorf("%q: err %v, want ErrMountInfo", bad, err)
		}
	}
	// The real table parses and holds the root mount.
	self, err := ReadMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range self {
		found = found || m.MountPoint == "/"
	}
	if !found {
		t.Errorf("no / in /proc/self/mountinfo")
	}
}
