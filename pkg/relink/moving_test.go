package relink

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
)

// appended returns what testproc.Append(_, size, count, _) writes.
func appended(size, count int) []byte {
	var b []byte
	for k := 0; k < count; k++ {
		b = append(b, bytes.Repeat([]byte{byte('a' + k%26)}, size)...)
	}
	return b
}

// TestMovingTargets: the holder appends to or truncates the file while the
// copy runs. The copy is driven chunk by chunk (1 MiB) and the holder acts
// after the first chunk, so the interleaving is the same on every run.
func TestMovingTargets(t *testing.T) {
	testfs.RequireRoot(t)
	data := randomBytes(8<<20, 7)
	tests := []struct {
		name   string
		during func(t *testing.T, h *testproc.Holder)
		want   []byte
	}{
		{"growing: copy up to the size seen at the start", func(t *testing.T, h *testproc.Holder) {
			h.Do(t, testproc.Append(0, 1<<20, 3, 0))
		}, data},
		{"truncated below the copied part", func(t *testing.T, h *testproc.Holder) {
			h.Do(t, testproc.Truncate(0, 300_000))
		}, data[:300_000]},
		{"truncated ahead of the copy", func(t *testing.T, h *testproc.Holder) {
			h.Do(t, testproc.Truncate(0, 3<<20+5))
		}, data[:3<<20+5]},
		{"truncated to zero", func(t *testing.T, h *testproc.Holder) {
			h.Do(t, testproc.Truncate(0, 0))
		}, []byte{}},
	}
	mnt := testfs.Mount(t, "ext4", 64)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := filepath.Join(mnt, "moving", strings.Repeat("x", i+1))
			writeFile(t, src, data)
			h, c := holdDeleted(t, src, "a")
			e := newEngine(t, Options{Methods: []Method{MethodCopy}})
			e.chunk = 1 << 20
			var once sync.Once
			e.hookChunk = func(int64) { once.Do(func() { tt.during(t, h) }) }
			res, err := resultOf(e.Rescue(ctx(t), pin(t, e, c), Destination{Root: filepath.Join(mnt, ".relinkd"), Rel: string(c.Path)}))
			if err != nil {
				t.Fatalf("rescue: %v", err)
			}
			if res.Bytes != int64(len(tt.want)) {
				t.Errorf("bytes: want %d, got %d", len(tt.want), res.Bytes)
			}
			mustEqualBytes(t, "rescued", tt.want, readAll(t, res.Path))
			// The copy reserved the blocks of the whole source up front;
			// what the truncation left past the end must be freed.
			var st unix.Stat_t
			must(t, unix.Stat(res.Path, &st))
			if alloc, limit := st.Blocks*512, int64(len(tt.want))+64<<10; alloc > limit {
				t.Errorf("copy of %d bytes allocates %d bytes, want at most %d", len(tt.want), alloc, limit)
			}
		})
	}
}

// TestFollow: a writer appends for about two seconds, then exits; the
// rescued file ends up with everything it wrote.
func TestFollow(t *testing.T) {
	testfs.RequireRoot(t)
	for _, tt := range []struct {
		fstype   string
		method   Method
		scanOnly bool // writers searched in /proc, not asked by lease
	}{{"ext4", MethodCopy, false}, {"ext4", MethodCopy, true}, {"btrfs", MethodReflink, false}, {"xfs", MethodReflink, false}} {
		name := tt.fstype
		if tt.scanOnly {
			name += "/proc_search"
		}
		t.Run(name, func(t *testing.T) {
			mnt := testfs.Mount(t, tt.fstype, 64)
			src := filepath.Join(mnt, "app.log")
			head := randomBytes(1<<20+17, 8)
			writeFile(t, src, head)
			h, c := holdDeleted(t, src, "a")
			w := NewWriters("")
			w.scanOnly = tt.scanOnly
			e := newEngine(t, Options{FollowPoll: 100 * time.Millisecond, Hash: true, Sidecar: true, Writers: w})
			polls := 0
			e.hookPoll = func(int64) { polls++ }
			p := pin(t, e, c)
			rs, err := e.Rescue(ctx(t), p, Destination{Root: filepath.Join(mnt, ".relinkd"), Rel: "app.log", Rule: "logs"})
			res, err := resultOf(rs, err)
			if err != nil {
				t.Fatal(err)
			}
			if res.Method != tt.method {
				t.Errorf("method: want %s, got %s", tt.method, res.Method)
			}
			// 40 chunks of 20 001 bytes (unaligned on purpose), one every
			// 50ms, then the writer exits.
			go func() {
				h.Do(t, testproc.Append(0, 20_001, 40, 50*time.Millisecond))
				h.Exit(t)
			}()
			final, err := rs.Follow(ctx(t))
			if err != nil {
				t.Fatalf("follow: %v", err)
			}
			<-h.Done()
			want := append(head, appended(20_001, 40)...)
			if !final.Followed || final.Bytes != int64(len(want)) || final.SHA256 != sha(want) {
				t.Errorf("follow result: want %d bytes sha256 %s, got %+v", len(want), sha(want), final)
			}
			mustEqualBytes(t, "followed", want, readAll(t, res.Path))
			// The content above proves the follow waited for the writer;
			// the polls show it looked more than once. (A pass over /proc
			// for writers on a loaded machine can take most of the 2 s the
			// writer runs, so more cannot be asked for.)
			if polls < 2 {
				t.Errorf("only %d polls: follow did not wait for the writer", polls)
			}
			checkSidecar(t, final, c.PID, c.FD, "logs")
			if ran := !w.at.IsZero(); ran != tt.scanOnly {
				t.Errorf("a pass over /proc ran: %v, want %v (asked by lease: %v)", ran, tt.scanOnly, !tt.scanOnly)
			}
		})
	}
}

// TestFollowCancel: Follow returns ctx's error when ctx ends first.
func TestFollowCancel(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 16)
	src := filepath.Join(mnt, "f")
	writeFile(t, src, []byte("hello"))
	_, c := holdDeleted(t, src, "a")
	e := newEngine(t, Options{FollowPoll: 10 * time.Millisecond})
	p := pin(t, e, c)
	rs, err := e.Rescue(ctx(t), p, Destination{Root: filepath.Join(mnt, "r"), Rel: "f"})
	if err != nil {
		t.Fatal(err)
	}
	cx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	res, err := rs.Follow(cx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want DeadlineExceeded while the writer lives, got %v", err)
	}
	if res.Followed || res.Bytes != 5 || res.Path == "" {
		t.Errorf("stopped follow: want the rescue so far (5 bytes, not followed), got %+v", res)
	}
}

// TestCancelledCopy: a rescue cancelled mid-copy leaves nothing behind.
func TestCancelledCopy(t *testing.T) {
	testfs.RequireRoot(t)
	for _, tmpfile := range []bool{true, false} {
		name := map[bool]string{true: "O_TMPFILE", false: "hidden temp"}[tmpfile]
		t.Run(name, func(t *testing.T) {
			mnt := testfs.Mount(t, "tmpfs", 64)
			src := filepath.Join(mnt, "big")
			writeFile(t, src, randomBytes(4<<20, 9))
			_, c := holdDeleted(t, src, "r")
			e := newEngine(t, Options{})
			e.noTmpfile = !tmpfile
			e.chunk = 1 << 20
			cx, cancel := context.WithCancel(ctx(t))
			e.hookChunk = func(int64) { cancel() }
			root := filepath.Join(mnt, ".relinkd")
			_, err := e.Rescue(cx, pin(t, e, c), Destination{Root: root, Rel: "big"})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("want context.Canceled, got %v", err)
			}
			if files := regularFiles(t, root); len(files) != 0 {
				t.Errorf("left behind: %v", files)
			}
		})
	}
}

// TestHiddenTempFallback: without O_TMPFILE the hidden temp is renamed
// into place and nothing else is left.
func TestHiddenTempFallback(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "ext4", 32)
	src := filepath.Join(mnt, "f")
	data := randomBytes(100_000, 10)
	writeFile(t, src, data)
	_, c := holdDeleted(t, src, "r")
	e := newEngine(t, Options{Sidecar: true})
	e.noTmpfile = true
	root := filepath.Join(mnt, ".relinkd")
	res, err := resultOf(e.Rescue(ctx(t), pin(t, e, c), Destination{Root: root, Rel: "f"}))
	if err != nil {
		t.Fatal(err)
	}
	mustEqualBytes(t, "rescued", data, readAll(t, res.Path))
	files := regularFiles(t, root)
	if len(files) != 2 || files[0] != res.Path || files[1] != res.Sidecar {
		t.Errorf("want only %s and its sidecar, got %v", res.Path, files)
	}
}

// TestNoOverwrite: a name already taken gets a suffix; the existing file
// is untouched.
func TestNoOverwrite(t *testing.T) {
	testfs.RequireRoot(t)
	eachWalk(t, func(t *testing.T, w walker) {
		mnt := testfs.Mount(t, "tmpfs", 16)
		root := filepath.Join(mnt, ".relinkd")
		writeFile(t, filepath.Join(root, "logs/app.log"), []byte("already here"))
		must(t, os.Chmod(root, 0o700))
		e := newEngine(t, Options{})
		e.walk = w
		var got []string
		for i := 0; i < 3; i++ {
			src := filepath.Join(mnt, "app.log")
			data := randomBytes(1000+i, uint64(20+i))
			writeFile(t, src, data)
			_, c := holdDeleted(t, src, "r")
			res, err := resultOf(e.Rescue(ctx(t), pin(t, e, c), Destination{Root: root, Rel: "logs/app.log"}))
			if err != nil {
				t.Fatal(err)
			}
			mustEqualBytes(t, res.Path, data, readAll(t, res.Path))
			got = append(got, filepath.Base(res.Path))
		}
		if want := []string{"app.log.1", "app.log.2", "app.log.3"}; strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("names: want %v, got %v", want, got)
		}
		if b := readAll(t, filepath.Join(root, "logs/app.log")); string(b) != "already here" {
			t.Errorf("existing file changed: %q", b)
		}
	})
}

// TestFollowLink: after a link the name is the inode itself; Follow only
// waits for the last writer and reports the final size.
func TestFollowLink(t *testing.T) {
	testfs.RequireRoot(t)
	for _, scanOnly := range []bool{false, true} {
		t.Run(map[bool]string{false: "lease", true: "proc_search"}[scanOnly], func(t *testing.T) {
			followLink(t, scanOnly)
		})
	}
}

func followLink(t *testing.T, scanOnly bool) {
	mnt := testfs.Mount(t, "ext4", 32)
	src := filepath.Join(mnt, "linked.log")
	writeFile(t, src, []byte("start\n"))
	h := testproc.Start(t, testproc.Link(src, src+".keep"), testproc.Open(src, "a"), testproc.Unlink(src))
	c := candidateOf(t, h.PID, h.FDs[0])
	w := NewWriters("")
	w.scanOnly = scanOnly
	e := newEngine(t, Options{FollowPoll: 50 * time.Millisecond, Writers: w})
	p := pin(t, e, c)
	rs, err := e.Rescue(ctx(t), p, Destination{Root: filepath.Join(mnt, ".relinkd"), Rel: "linked.log"})
	res, err := resultOf(rs, err)
	if err != nil || res.Method != MethodLink {
		t.Fatalf("want a link, got %+v %v", res, err)
	}
	go func() {
		h.Do(t, testproc.Append(0, 1000, 10, 20*time.Millisecond))
		h.Exit(t)
	}()
	final, err := rs.Follow(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte("start\n"), appended(1000, 10)...)
	if !final.Followed || final.Bytes != int64(len(want)) {
		t.Errorf("want %d bytes followed, got %+v", len(want), final)
	}
	mustEqualBytes(t, "linked", want, readAll(t, res.Path))
}
