package mounts

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// TestDeletedOpen sums fixture candidates against fixture mount tables:
// each inode once per filesystem and once per holder, allocated blocks
// rather than apparent sizes, bind mounts and a container's view of a
// host filesystem as one entry, an unknown mount by its device.
func TestDeletedOpen(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	host := write("host-mountinfo", `1 0 8:1 / / rw - ext4 /dev/sda1 rw
10 1 8:2 /sub /srv/sub rw - xfs /dev/sda2 rw
11 1 8:2 / /data rw - xfs /dev/sda2 rw
`)
	// pid 300 runs in a container: its mount 99 of /dev/sda2 is not in
	// the host's table.
	write("proc/300/mountinfo", "99 98 8:2 /sub/ctr / rw - xfs /dev/sda2 rw\n")
	p := New(&config.Defaults().Rescue, zaptest.NewLogger(t), WithProcRoot(filepath.Join(dir, "proc")))
	p.view = hostView{mountinfo: host}

	c := func(pid int, comm string, mnt int, dev, ino uint64, size, blocks int64) scanner.Candidate {
		return scanner.Candidate{PID: pid, Comm: comm, MntID: mnt, Dev: dev, Ino: ino, Size: size, Blocks: blocks}
	}
	sda1, sda2 := unix.Mkdev(8, 1), unix.Mkdev(8, 2)
	cs := []scanner.Candidate{
		c(100, "db", 1, sda1, 7, 1<<30, 16),     // sparse: 8 KiB on disk
		c(100, "db", 1, sda1, 7, 1<<30, 16),     // the same inode on another descriptor
		c(200, "backup", 1, sda1, 7, 1<<30, 16), // and held by another process
		c(200, "backup", 1, sda1, 8, 4096, 8),
		c(100, "db", 10, sda2, 5, 100, 8),    // through a bind mount
		c(300, "app", 99, sda2, 6, 5000, 16), // in a container
		c(400, "lost", 0, unix.Mkdev(9, 9), 1, 10, 8),
	}
	got := p.DeletedOpen(cs)
	want := []FSUsage{
		{MountPoint: "/", FSType: "ext4", Dev: "8:1", Files: 2, Allocated: 24 * 512, Size: 1<<30 + 4096, Holders: []HolderUsage{
			{PID: 200, Comm: "backup", Files: 2, Allocated: 24 * 512},
			{PID: 100, Comm: "db", Files: 1, Allocated: 16 * 512},
		}},
		{MountPoint: "/data", FSType: "xfs", Dev: "8:2", Files: 2, Allocated: 24 * 512, Size: 5100, Holders: []HolderUsage{
			{PID: 300, Comm: "app", Files: 1, Allocated: 16 * 512},
			{PID: 100, Comm: "db", Files: 1, Allocated: 8 * 512},
		}},
		{MountPoint: "", Dev: "9:9", Files: 1, Allocated: 8 * 512, Size: 10, Holders: []HolderUsage{
			{PID: 400, Comm: "lost", Files: 1, Allocated: 8 * 512},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("DeletedOpen:\n-want %+v\n+got  %+v", want, got)
	}
}
