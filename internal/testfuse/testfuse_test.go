package testfuse

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testproc"
)

func TestMain(m *testing.M) { testproc.Main(m) }

// holdDeleted starts a holder that creates name on the mount at dir,
// writes data to it and unlinks it, and returns /proc/PID/fd/N for it.
func holdDeleted(t *testing.T, dir, name, data string) (*testproc.Holder, string) {
	t.Helper()
	p := filepath.Join(dir, name)
	h := testproc.Start(t, testproc.Open(p, "rw"), testproc.Write(0, data), testproc.Unlink(p))
	return h, fmt.Sprintf("/proc/%d/fd/%d", h.PID, h.FDs[0])
}

func TestReadWrite(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16+3) // 1 MiB + 48: several max_write WRITEs
	tests := []struct {
		name string
		opt  Options
	}{
		{"page cache", Options{}},
		{"direct io", Options{DirectIO: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			MountWith(t, dir, tc.opt)
			small, large := filepath.Join(dir, "small"), filepath.Join(dir, "large")
			if err := os.WriteFile(small, []byte("hello"), 0o640); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(large, big, 0o644); err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(large); err != nil || !bytes.Equal(got, big) {
				t.Fatalf("read back %s: %d bytes, %v; want %d bytes", large, len(got), err, len(big))
			}
			var st unix.Stat_t
			if err := unix.Stat(small, &st); err != nil {
				t.Fatal(err)
			}
			if st.Size != 5 || st.Nlink != 1 || st.Mode != unix.S_IFREG|0o640 || st.Blksize != 4096 {
				t.Errorf("stat %s: size %d nlink %d mode %o blksize %d, want 5 1 100640 4096", small, st.Size, st.Nlink, st.Mode, st.Blksize)
			}

			// O_TRUNC and ftruncate(2) arrive as SETATTR with FATTR_SIZE.
			if err := os.WriteFile(large, []byte("short"), 0o644); err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(large); err != nil || string(got) != "short" {
				t.Errorf("after O_TRUNC: %q, %v; want \"short\"", got, err)
			}
			if err := os.Truncate(small, 8); err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(small); err != nil || string(got) != "hello\x00\x00\x00" {
				t.Errorf("after truncate: %q, %v", got, err)
			}
			if err := os.Chmod(small, 0o600); err != nil {
				t.Fatal(err)
			}
			mtime := time.Unix(1700000000, 123456789)
			if err := os.Chtimes(small, mtime, mtime); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(small); err != nil || fi.Mode() != 0o600 || !fi.ModTime().Equal(mtime) {
				t.Errorf("after chmod, chtimes: %v, %v; want -rw------- %v", fi.Mode(), fi.ModTime(), mtime)
			}

			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			if want := []string{"large", "small"}; !slices.Equal(names, want) {
				t.Errorf("readdir -want +got:\n-%q\n+%q", want, names)
			}
			var sfs unix.Statfs_t
			if err := unix.Statfs(dir, &sfs); err != nil || sfs.Bsize != 4096 || sfs.Namelen != 255 {
				t.Errorf("statfs: bsize %d namelen %d, %v", sfs.Bsize, sfs.Namelen, err)
			}
			if err := os.Remove(small); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(small); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stat after unlink: %v, want ENOENT", err)
			}
			if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); !errors.Is(err, unix.ENOSYS) {
				t.Errorf("mkdir: %v, want ENOSYS", err)
			}
		})
	}
}

// TestDeletedOpen checks what the daemon sees of a file deleted while a
// process holds it: the magic link says " (deleted)", fstat shows nlink
// 0, and the data still reads back through /proc/PID/fd/N.
func TestDeletedOpen(t *testing.T) {
	dir := t.TempDir()
	srv := Mount(t, dir)
	t.Logf("kernel FUSE protocol 7.%d", srv.KernelMinor())
	_, proc := holdDeleted(t, dir, "gone", "hello fuse")
	link, err := os.Readlink(proc)
	if want := filepath.Join(dir, "gone") + " (deleted)"; err != nil || link != want {
		t.Errorf("readlink %s = %q, %v; want %q", proc, link, err, want)
	}
	var st unix.Stat_t
	if err := unix.Stat(proc, &st); err != nil || st.Nlink != 0 || st.Size != 10 {
		t.Errorf("stat %s: nlink %d size %d, %v; want nlink 0 size 10", proc, st.Nlink, st.Size, err)
	}
	f, err := os.Open(proc)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var fst unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil || fst.Nlink != 0 || fst.Ino != st.Ino {
		t.Errorf("fstat: nlink %d ino %d, %v; want nlink 0 ino %d", fst.Nlink, fst.Ino, err, st.Ino)
	}
	if got, err := os.ReadFile(proc); err != nil || string(got) != "hello fuse" {
		t.Errorf("read %s = %q, %v; want \"hello fuse\"", proc, got, err)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("readdir after unlink: %v, %v; want empty", ents, err)
	}
}

// hangEnv is what a hang case works on: a deleted file held by a holder
// (through /proc/PID/fd/N) and a file that is still named.
type hangEnv struct {
	proc, named string
}

// A call is prepared before Hang (opening what it needs) and returns the
// blocking part, which describes its result.
type call func(t *testing.T, e hangEnv) func() (string, error)

func statCall(named bool) call {
	return func(t *testing.T, e hangEnv) func() (string, error) {
		p := e.proc
		if named {
			p = e.named
		}
		return func() (string, error) {
			var st unix.Stat_t
			if err := unix.Stat(p, &st); err != nil {
				return "", err
			}
			return fmt.Sprintf("nlink=%d size=%d", st.Nlink, st.Size), nil
		}
	}
}

func openCall(t *testing.T, e hangEnv) func() (string, error) {
	return func() (string, error) {
		fd, err := unix.Open(e.proc, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", err
		}
		unix.Close(fd)
		return "opened", nil
	}
}

func pollCall(t *testing.T, e hangEnv) func() (string, error) {
	fd, err := unix.Open(e.proc, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return func() (string, error) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil {
			return "", err
		}
		return fmt.Sprintf("revents=%#x", fds[0].Revents), nil
	}
}

func readCall(t *testing.T, e hangEnv) func() (string, error) {
	fd, err := unix.Open(e.proc, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// After an abort, close(2) reports the failed FLUSH; nothing to check.
	t.Cleanup(func() { unix.Close(fd) })
	return func() (string, error) {
		buf := make([]byte, 64)
		n, err := unix.Pread(fd, buf, 0)
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}

// writeFile creates path with data through x/sys/unix: unlike os.Open it
// makes no epoll_ctl(2), which with Options.Poll would send POLL from
// inside the Go runtime (see Options.Poll).
func writeFile(t *testing.T, path, data string) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatalf("create %s: %v", path, err)
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte(data)); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

// TestHang holds one opcode while a call that needs it runs in a
// goroutine: the call must stay blocked until Resume, which answers it
// correctly, or Abort, which fails it.
func TestHang(t *testing.T) {
	// A request the server has read and not answered ends with
	// ECONNABORTED when the connection is aborted (end_requests in
	// fs/fuse/dev.c); a request made afterwards fails with ENOTCONN.
	tests := []struct {
		name    string
		op      Op
		opt     Options
		call    call
		abort   bool // end with Abort instead of Resume
		want    string
		wantErr error
	}{
		{name: "getattr resume", op: OpGetattr, call: statCall(false), want: "nlink=0 size=10"},
		{name: "getattr abort", op: OpGetattr, call: statCall(false), abort: true, wantErr: unix.ECONNABORTED},
		{name: "lookup resume", op: OpLookup, call: statCall(true), want: "nlink=1 size=4"},
		// d_revalidate takes the failed LOOKUP for a stale name and
		// looks it up afresh, which fails as a new request.
		{name: "lookup abort", op: OpLookup, call: statCall(true), abort: true, wantErr: unix.ENOTCONN},
		{name: "open resume", op: OpOpen, call: openCall, want: "opened"},
		{name: "open abort", op: OpOpen, call: openCall, abort: true, wantErr: unix.ECONNABORTED},
		{name: "read resume", op: OpRead, call: readCall, want: "hello fuse"},
		// The failed readahead leaves the page not uptodate; the read
		// retries with read_folio, a new request.
		{name: "read abort", op: OpRead, call: readCall, abort: true, wantErr: unix.ENOTCONN},
		{name: "direct read resume", op: OpRead, opt: Options{DirectIO: true}, call: readCall, want: "hello fuse"},
		{name: "direct read abort", op: OpRead, opt: Options{DirectIO: true}, call: readCall, abort: true, wantErr: unix.ECONNABORTED},
		// After ENOSYS the kernel reports the default mask (readable);
		// after an abort, POLLERR.
		{name: "poll resume", op: OpPoll, opt: Options{Poll: true}, call: pollCall, want: "revents=0x1"},
		{name: "poll abort", op: OpPoll, opt: Options{Poll: true}, call: pollCall, abort: true, want: "revents=0x8"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			srv := MountWith(t, dir, tc.opt)
			named := filepath.Join(dir, "kept")
			writeFile(t, named, "kept")
			_, proc := holdDeleted(t, dir, "gone", "hello fuse")
			blocking := tc.call(t, hangEnv{proc: proc, named: named})

			srv.Hang(tc.op)
			type result struct {
				got string
				err error
			}
			done := make(chan result, 1)
			go func() {
				got, err := blocking()
				done <- result{got, err}
			}()
			srv.WaitPending(t, 1)
			// Deliberately a fixed wait: it checks that nothing
			// happens, which no event can announce.
			select {
			case r := <-done:
				t.Fatalf("returned while %s was held: %q, %v", tc.op, r.got, r.err)
			case <-time.After(200 * time.Millisecond):
			}
			start := time.Now()
			if tc.abort {
				srv.Abort()
			} else {
				srv.Resume()
			}
			select {
			case r := <-done:
				if !errors.Is(r.err, tc.wantErr) || r.got != tc.want {
					t.Errorf("after %s: %q, %v; want %q, %v", map[bool]string{false: "Resume", true: "Abort"}[tc.abort], r.got, r.err, tc.want, tc.wantErr)
				}
				t.Logf("returned %v after the end of the hang", time.Since(start))
			case <-time.After(10 * time.Second):
				t.Fatal("still blocked 10s after the hang ended")
			}
			if n := srv.Pending(); n != 0 {
				t.Errorf("Pending() = %d after the hang ended, want 0", n)
			}
		})
	}
}

// TestCleanupAborts leaves a stat blocked on a held GETATTR when the test
// ends: its cleanup must abort the connection so that the stat fails and
// the test finishes.
func TestCleanupAborts(t *testing.T) {
	res := make(chan error, 1)
	start := time.Now()
	t.Run("held at the end", func(t *testing.T) {
		dir := t.TempDir()
		srv := Mount(t, dir)
		_, proc := holdDeleted(t, dir, "gone", "data")
		srv.Hang(OpGetattr)
		go func() {
			var st unix.Stat_t
			res <- unix.Stat(proc, &st)
		}()
		srv.WaitPending(t, 1)
	})
	select {
	case err := <-res:
		if !errors.Is(err, unix.ECONNABORTED) {
			t.Errorf("stat blocked at cleanup returned %v, want ECONNABORTED", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stat still blocked 10s after the cleanup")
	}
	t.Logf("subtest and stat done in %v", time.Since(start))
}
