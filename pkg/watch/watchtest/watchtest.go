// Package watchtest helps tests make the kernel's inotify event queue
// overflow for real.
package watchtest

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
)

const sysctl = "/proc/sys/fs/inotify/max_queued_events"

// LowQueue sets fs.inotify.max_queued_events to n and returns a function
// that restores it; it is also restored when the test ends. The kernel
// copies the limit into an inotify instance when inotify_init1(2) creates
// it, so create the instance under test, then restore at once: the setting
// is global, and the window in which other processes' new instances get
// the small queue must stay short.
//
// Test binaries run in parallel, so an exclusive flock(2) on a file in the
// temporary directory serialises them; the file keeps the original value
// while it is lowered, and a later caller restores it if a test died
// before it could.
func LowQueue(t testing.TB, n int) (restore func()) {
	t.Helper()
	testfs.RequireRoot(t)
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "relinkd-inotify-queue.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		lock.Close()
		t.Fatalf("flock %s: %v", lock.Name(), err)
	}
	if saved := readInt(t, lock.Name()); saved > 0 {
		t.Logf("restoring %s to %d, left lowered by an earlier run", sysctl, saved)
		writeInt(t, sysctl, saved)
	}
	orig := readInt(t, sysctl)
	writeInt(t, lock.Name(), orig)
	writeInt(t, sysctl, n)
	var once sync.Once
	restore = func() {
		once.Do(func() {
			writeInt(t, sysctl, orig)
			if err := lock.Truncate(0); err != nil {
				t.Error(err)
			}
			lock.Close() // releases the flock
		})
	}
	t.Cleanup(restore)
	return restore
}

func readInt(t testing.TB, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return 0
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%s: %q is not a number", path, s)
	}
	return v
}

func writeInt(t testing.TB, path string, v int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strconv.Itoa(v)+"\n"), 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}
