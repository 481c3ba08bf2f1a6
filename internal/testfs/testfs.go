// Package testfs creates real filesystems for tests: loop-mounted ext4,
// XFS with reflink, btrfs, and tmpfs. Tests that need root or a tool skip
// with a reason for a developer, and fail instead when CI=true.
package testfs

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// InCI reports whether the tests run in CI, where nothing may be skipped.
func InCI() bool { return os.Getenv("CI") == "true" }

// Skip skips t with reason, or fails it in CI.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("cannot run in CI: %s", reason)
	}
	t.Skip(reason)
}

// RequireRoot skips unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root (mounts, other users' processes)")
	}
}

// RequireTool skips unless every named program is on PATH.
func RequireTool(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			Skip(t, "needs "+n+" (make test installs it)")
		}
	}
}

// mkfs returns the command that formats an image as fstype.
func mkfs(fstype, image string) *exec.Cmd {
	switch fstype {
	case "ext4":
		return exec.Command("mkfs.ext4", "-q", "-F", image)
	case "ext2":
		// Block-mapped files: no extents, so no fallocate(2).
		return exec.Command("mkfs.ext2", "-q", "-F", image)
	case "xfs":
		return exec.Command("mkfs.xfs", "-q", "-f", "-m", "reflink=1", image)
	case "btrfs":
		return exec.Command("mkfs.btrfs", "-q", "-f", image)
	}
	return nil
}

// Mount creates and mounts a filesystem of type fstype ("ext4", "ext2",
// "xfs", "btrfs" or "tmpfs") of sizeMiB and returns its mount point. The image is
// sparse; it is unmounted and removed when the test ends. XFS needs at least
// 300 MiB and btrfs 120 MiB; smaller sizes are raised to those.
func Mount(t testing.TB, fstype string, sizeMiB int) string {
	t.Helper()
	RequireRoot(t)
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	var args []string
	if fstype == "tmpfs" {
		args = []string{"-t", "tmpfs", "-o", "size=" + strconv.Itoa(sizeMiB) + "m", "tmpfs", mnt}
	} else {
		switch fstype {
		case "xfs":
			sizeMiB = max(sizeMiB, 300)
			RequireTool(t, "mkfs.xfs")
		case "btrfs":
			sizeMiB = max(sizeMiB, 120)
			RequireTool(t, "mkfs.btrfs")
		default:
			RequireTool(t, "mkfs.ext4")
		}
		image := filepath.Join(dir, fstype+".img")
		f, err := os.Create(image)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(int64(sizeMiB) << 20); err != nil {
			t.Fatal(err)
		}
		f.Close()
		cmd := mkfs(fstype, image)
		if cmd == nil {
			t.Fatalf("testfs: unknown filesystem type %q", fstype)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
		}
		args = []string{"-o", "loop", image, mnt}
	}
	if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
		t.Fatalf("mount %v: %v\n%s", args, err, out)
	}
	t.Cleanup(func() { Unmount(t, mnt) })
	return mnt
}

// Unmount unmounts mnt, retrying briefly while a just-killed process still
// holds it, then detaching it lazily so a test never leaks a busy mount.
func Unmount(t testing.TB, mnt string) {
	t.Helper()
	for i := 0; i < 20; i++ {
		if exec.Command("umount", mnt).Run() == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
		t.Errorf("umount -l %s: %v\n%s", mnt, err, out)
	}
}

// Reachable lets every user reach dir, for tests whose processes run as
// another user: it adds search permission for others to dir and to each
// directory above it up to the system's temporary directory (t.TempDir and
// Mount create theirs 0700).
func Reachable(t testing.TB, dir string) {
	t.Helper()
	top := filepath.Clean(os.TempDir())
	if rel, err := filepath.Rel(top, dir); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		t.Fatalf("testfs.Reachable: %s is not below %s", dir, top)
	}
	for d := filepath.Clean(dir); d != top && d != "/" && d != "."; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 != 0 {
			continue
		}
		if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
			t.Fatal(err)
		}
	}
}
