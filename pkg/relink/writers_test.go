package relink

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
)

// TestOpenForWrite asks the kernel about a deleted file written through
// a descriptor, then through a shared writable mapping alone (which no
// /proc/PID/fd search can see), then by nobody.
func TestOpenForWrite(t *testing.T) {
	testfs.RequireRoot(t)
	path := filepath.Join(t.TempDir(), "f")
	w, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	pinFD, err := openPin(path)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pinFD)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	want := func(step string, writing bool) {
		t.Helper()
		got, ok, err := openForWrite(pinFD)
		if !ok || err != nil || got != writing {
			t.Fatalf("%s: want writing=%v, got writing=%v ok=%v err=%v", step, writing, got, ok, err)
		}
	}
	want("open for writing", true)
	m, err := unix.Mmap(int(w.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	want("descriptor closed, writable mapping left", true)
	if err := unix.Munmap(m); err != nil {
		t.Fatal(err)
	}
	want("mapping gone", false)
	// The lease was dropped: a writer can open the file again at once
	// (with a lease left, this O_NONBLOCK open would fail EWOULDBLOCK).
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(pinFD), unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open for writing after the probe: %v", err)
	}
	want("reopened for writing", true)
	unix.Close(fd)
	want("closed again", false)
}

// TestOpenForWriteRefused: without CAP_LEASE, on a file owned by
// somebody else, no lease can be taken; openForWrite says so (ok false)
// rather than guess, and the follow falls back to the /proc search.
func TestOpenForWriteRefused(t *testing.T) {
	testfs.RequireRoot(t)
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	pinFD, err := openPin(path)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pinFD)
	type answer struct {
		ok  bool
		err error
	}
	got := make(chan answer, 1)
	go func() {
		// Capabilities belong to the thread: drop CAP_LEASE on this
		// one and let it end with the goroutine (never unlocked).
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			got <- answer{err: err}
			return
		}
		data[unix.CAP_LEASE/32].Effective &^= 1 << (unix.CAP_LEASE % 32)
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			got <- answer{err: err}
			return
		}
		_, ok, err := openForWrite(pinFD)
		got <- answer{ok, err}
	}()
	a := <-got
	if a.ok || a.err == nil {
		t.Fatalf("want the lease refused (ok false, EACCES), got ok=%v err=%v", a.ok, a.err)
	}
	if !errors.Is(a.err, unix.EACCES) {
		t.Errorf("want EACCES, got %v", a.err)
	}
}
