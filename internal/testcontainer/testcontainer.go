// Package testcontainer makes containers for tests the way runtimes make
// them: an overlayfs root whose lower, upper and work directories are on a
// loop-mounted ext4 (internal/testfs), mounted in the host's namespace
// (where Docker keeps /var/lib/docker/overlay2/ID/merged); the host's /usr
// bound read-only into it; entered with unshare --mount --pid --fork and
// pivot_root(2); optionally in a cgroup named as a runtime names its
// containers' (docker-<64 hex>.scope, machine-<name>.scope). Holders
// started in it are internal/testproc holders, so the package's TestMain
// must call testproc.Main.
package testcontainer

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
)

// Cgroup naming, as the runtimes do it.
const (
	NoCgroup = ""       // the holder stays in the test's cgroup
	Docker   = "docker" // docker-<ID>.scope (cgroup v2), /docker/<ID> (v1)
	Nspawn   = "nspawn" // machine.slice/machine-<Name>.scope
)

// Options say how the container is made.
type Options struct {
	Cgroup string // NoCgroup, Docker or Nspawn
	Name   string // the machine name with Nspawn ("" picks one with a "-" in it)
	// Volumes binds host directories into the container, as docker run -v
	// HOST:PATH does: PATH (the container's view) is created in the lower
	// layer and HOST bound onto it when a holder starts.
	Volumes []Volume
}

// Volume is a host directory bound into the container.
type Volume struct{ Host, Path string }

// Container is a container's root, ready to start holders in.
type Container struct {
	Merged string // host path of the overlay mount, the container's "/"
	Upper  string // its writable layer
	Lower  string // its read-only layer
	// ID is what the container's cgroup names: the 64-hex id with Docker,
	// the machine name with Nspawn, "" without a cgroup.
	ID string
	// CgroupPath is the cgroup as /proc/PID/cgroup shows it, "" for none.
	CgroupPath string

	cgroupDir string // where holders are moved, "" for none
	volumes   []Volume
}

// New makes a container root. It needs root, unshare, pivot_root and an
// ext4 loop device; the overlay and the filesystem go when the test ends.
func New(t testing.TB, opt Options) *Container {
	t.Helper()
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "unshare", "pivot_root", "mount", "umount")
	fs := testfs.Mount(t, "ext4", 64)
	c := &Container{Merged: filepath.Join(fs, "merged"), Upper: filepath.Join(fs, "upper"), Lower: filepath.Join(fs, "lower"), volumes: opt.Volumes}
	lower, work := c.Lower, filepath.Join(fs, "work")
	for _, d := range []string{lower, c.Upper, work, c.Merged} {
		mkdir(t, d)
	}
	// A minimal tree: the host's /usr is bound in at start, /bin and the
	// other merged-/usr links are copied as they are on the host.
	for _, d := range []string{"usr", "proc", "dev", "tmp", "etc", "var/log", ".oldroot"} {
		mkdir(t, filepath.Join(lower, d))
	}
	for _, l := range []string{"bin", "sbin", "lib", "lib32", "lib64", "libx32"} {
		target, err := os.Readlink("/" + l)
		switch {
		case err == nil:
			if err := os.Symlink(target, filepath.Join(lower, l)); err != nil {
				t.Fatal(err)
			}
		case errors.Is(err, unix.EINVAL):
			mkdir(t, filepath.Join(lower, l)) // a real directory: bound at start
		}
	}
	for _, v := range opt.Volumes {
		mkdir(t, filepath.Join(lower, v.Path))
	}
	if err := os.WriteFile(filepath.Join(lower, "relinkd-holder"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "-t", "overlay", "overlay", "-o",
		"lowerdir="+lower+",upperdir="+c.Upper+",workdir="+work, c.Merged)
	t.Cleanup(func() { testfs.Unmount(t, c.Merged) })
	c.cgroup(t, opt)
	return c
}

// Start runs a testproc holder with steps as the container's init (PID 1
// of its own PID namespace, in its own mount namespace, its root the
// overlay) and, with a cgroup, moves it there once it is ready. Paths in
// steps are the container's view.
func (c *Container) Start(t testing.TB, steps ...testproc.Step) *testproc.Holder {
	t.Helper()
	h := testproc.StartWith(t, testproc.Options{Forked: true, Command: func(self string) *exec.Cmd {
		args := []string{"--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
			"/bin/sh", "-c", enterScript, "sh", c.Merged, self}
		for _, v := range c.volumes {
			args = append(args, v.Host, v.Path)
		}
		return exec.Command("unshare", args...)
	}}, steps...)
	if c.cgroupDir != "" {
		if err := os.WriteFile(filepath.Join(c.cgroupDir, "cgroup.procs"), []byte(strconv.Itoa(h.PID)), 0o644); err != nil {
			t.Fatalf("move holder %d into %s: %v", h.PID, c.cgroupDir, err)
		}
	}
	return h
}

// enterScript runs in the new namespaces (the host's tools still in
// view): it binds what the root needs, pivots into it, drops the old root
// and execs the holder, as a runtime's init does.
const enterScript = `set -e
m=$1 self=$2
shift 2
while [ $# -ge 2 ]; do mount --bind "$1" "$m$2"; shift 2; done
mount -o bind,ro /usr "$m/usr"
for d in bin sbin lib lib32 lib64 libx32; do
	if [ -d "/$d" ] && [ ! -L "/$d" ]; then mount -o bind,ro "/$d" "$m/$d"; fi
done
mount -t proc proc "$m/proc"
mount -o bind,ro "$self" "$m/relinkd-holder"
cd "$m"
pivot_root . .oldroot
cd /
umount -l /.oldroot
exec /relinkd-holder
`

// Path returns the host path of p, a path in the container's view, as
// the host sees the overlay.
func (c *Container) Path(p string) string { return filepath.Join(c.Merged, p) }

// cgroup makes the container's cgroup as opt asks.
func (c *Container) cgroup(t testing.TB, opt Options) {
	t.Helper()
	if opt.Cgroup == NoCgroup {
		return
	}
	root, v2 := cgroupRoot()
	if root == "" {
		testfs.Skip(t, "no writable cgroup hierarchy")
	}
	var rel string
	switch opt.Cgroup {
	case Docker:
		var b [32]byte
		_, _ = rand.Read(b[:])
		c.ID = hex.EncodeToString(b[:])
		if v2 {
			rel = "relinkd-test.slice/docker-" + c.ID + ".scope"
		} else {
			rel = "docker/" + c.ID // the cgroupfs driver
		}
	case Nspawn:
		c.ID = opt.Name
		if c.ID == "" {
			var b [4]byte
			_, _ = rand.Read(b[:])
			c.ID = "relinkd-" + hex.EncodeToString(b[:])
		}
		rel = "machine.slice/machine-" + strings.ReplaceAll(c.ID, "-", `\x2d`) + ".scope"
	default:
		t.Fatalf("testcontainer: unknown cgroup naming %q", opt.Cgroup)
	}
	c.cgroupDir, c.CgroupPath = filepath.Join(root, rel), "/"+rel
	if err := os.MkdirAll(c.cgroupDir, 0o755); err != nil {
		testfs.Skip(t, "cannot create a cgroup: "+err.Error())
	}
	t.Cleanup(func() {
		// The holder is gone by now (its cleanup runs first); the
		// kernel may take a moment to let go of the cgroup.
		for d := c.cgroupDir; d != root; d = filepath.Dir(d) {
			for i := 0; i < 100; i++ {
				if err := unix.Rmdir(d); err == nil || !errors.Is(err, unix.EBUSY) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
}

// cgroupRoot returns a writable cgroup hierarchy to make containers'
// cgroups in, preferring cgroup v2 (mounted at /sys/fs/cgroup, or at
// /sys/fs/cgroup/unified on a hybrid host), else the v1 pids hierarchy.
func cgroupRoot() (root string, v2 bool) {
	for _, d := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(d, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC && unix.Access(d, unix.W_OK) == nil {
			return d, true
		}
	}
	for _, d := range []string{"/sys/fs/cgroup/pids", "/sys/fs/cgroup/systemd"} {
		var st unix.Statfs_t
		if unix.Statfs(d, &st) == nil && st.Type == unix.CGROUP_SUPER_MAGIC && unix.Access(d, unix.W_OK) == nil {
			return d, false
		}
	}
	return "", false
}

func mkdir(t testing.TB, d string) {
	t.Helper()
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}
