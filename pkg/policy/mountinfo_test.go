package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

func TestGlobPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"/var/log/**": "/var/log", "/srv/*.log": "/srv", "**/x": "/", "/a/b/c.log": "/a/b",
		"/*": "/", "/data/{a,b}/x": "/data", "/x/y?/z": "/x",
	} {
		if got := globPrefix(in); got != want {
			t.Errorf("globPrefix(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCoveredMounts(t *testing.T) {
	host := []Mount{
		{ID: 1, MountPoint: "/", FSType: "ext4"},
		{ID: 2, MountPoint: "/var/log", FSType: "xfs"},
		{ID: 3, MountPoint: "/var/log/journal", FSType: "ext4"},
		{ID: 4, MountPoint: "/proc", FSType: "proc"},
		{ID: 5, MountPoint: "/srv/data", FSType: "btrfs"},
		{ID: 6, MountPoint: "/home", FSType: "ext4"},
	}
	cfg := &Config{Watch: []Rule{
		{Name: "logs", Paths: []string{"/var/log/**"}},
		{Name: "srv-logs", Paths: []string{"/srv/*.log"}},
		{Name: "any", Paths: []string{"**/core"}},
	}}
	got := CoveredMounts(cfg, host)
	var lines []string
	for _, c := range got {
		lines = append(lines, fmt.Sprintf("%s %v", c.Mount.MountPoint, c.Rules))
	}
	// /srv/*.log files live on "/": /srv/data holds none of them.
	want := []string{"/ [srv-logs any]", "/home [any]", "/srv/data [any]", "/var/log [logs any]", "/var/log/journal [logs any]"}
	if !reflect.DeepEqual(lines, want) {
		t.Errorf("-want %q\n+got  %q", want, lines)
	}
}

func TestEffectiveCaps(t *testing.T) {
	dir := t.TempDir()
	status := filepath.Join(dir, "status")
	writeFile(t, status, "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000280004\n")
	caps, err := EffectiveCaps(status)
	if err != nil || caps != 0x280004 {
		t.Fatalf("caps %x %v", caps, err)
	}
	var held []string
	for _, c := range Capabilities() {
		if caps&(1<<c.Bit) != 0 {
			held = append(held, c.Name)
		}
	}
	// 0x280004: bits 2 (DAC_READ_SEARCH), 19 (SYS_PTRACE), 21 (SYS_ADMIN).
	if want := []string{"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}; !reflect.DeepEqual(held, want) {
		t.Errorf("held %v, want %v", held, want)
	}
	writeFile(t, status, "Name:\tx\n")
	if _, err := EffectiveCaps(status); !errors.Is(err, ErrNoCapEff) {
		t.Errorf("no CapEff: %v", err)
	}
	if _, err := EffectiveCaps(filepath.Join(dir, "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
