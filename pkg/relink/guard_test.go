package relink

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// holdTwoRanges holds deleted a sparse file on tmpfs: 4 MiB of data, a
// 16 MiB hole, 16 MiB of data.
func holdTwoRanges(t *testing.T) scanner.Candidate {
	t.Helper()
	src := filepath.Join(testfs.Mount(t, "tmpfs", 64), "sparse")
	f, err := os.Create(src)
	must(t, err)
	_, err = f.WriteAt(randomBytes(4<<20, 21), 0)
	must(t, err)
	_, err = f.WriteAt(randomBytes(16<<20, 22), 20<<20)
	must(t, err)
	must(t, f.Close())
	_, c := holdDeleted(t, src, "r")
	return c
}

// rescuedWriter rescues "hello" held deleted for appending on ext4, with
// an engine that polls every 20 ms and writes sidecars.
func rescuedWriter(t *testing.T) (*testproc.Holder, *Engine, *Rescued, Result) {
	t.Helper()
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "ext4", 64)
	src := filepath.Join(mnt, "f")
	writeFile(t, src, []byte("hello"))
	h, c := holdDeleted(t, src, "a")
	e := newEngine(t, Options{FollowPoll: 20 * time.Millisecond, Sidecar: true})
	rs, err := e.Rescue(ctx(t), pin(t, e, c), Destination{Root: filepath.Join(mnt, "r"), Rel: "f"})
	must(t, err)
	return h, e, rs, rs.Result()
}

func freeOf(t *testing.T, dir string) uint64 {
	t.Helper()
	var fs unix.Statfs_t
	must(t, unix.Statfs(dir, &fs))
	return fs.Bavail * uint64(fs.Bsize)
}

// TestReflinkBelowMinFree: a reflink takes no data blocks, so it still
// runs on a filesystem already below min_free (README), where a copy may
// not.
func TestReflinkBelowMinFree(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "xfs", 300)
	data := randomBytes(1<<20, 1)
	src := filepath.Join(mnt, "app.log")
	writeFile(t, src, data)
	_, c := holdDeleted(t, src, "r")
	root := filepath.Join(mnt, ".relinkd")
	minFree := freeOf(t, mnt) + 1
	e := newEngine(t, Options{Methods: []Method{MethodLink, MethodReflink}})
	res, err := resultOf(e.Rescue(ctx(t), pin(t, e, c), Destination{Root: root, Rel: "app.log", MinFreeBytes: minFree}))
	if err != nil || res.Method != MethodReflink {
		t.Fatalf("want a reflink below min_free, got %+v, %v", res, err)
	}
	mustEqualBytes(t, "reflinked", data, readAll(t, res.Path))
	e = newEngine(t, Options{Methods: []Method{MethodCopy}})
	if _, err := e.Rescue(ctx(t), pin(t, e, c), Destination{Root: root, Rel: "app.log", MinFreeBytes: minFree}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("a copy below min_free: want ErrNoSpace, got %v", err)
	}
}

// TestPreallocationKeepsMinFree: the reservation of a data range is
// checked against min_free before it is made, so even for a moment the
// copy never takes the filesystem below the floor.
func TestPreallocationKeepsMinFree(t *testing.T) {
	testfs.RequireRoot(t)
	c := holdTwoRanges(t)
	dst := testfs.Mount(t, "ext4", 64)
	const minFree = 10 << 20
	e := newEngine(t, Options{})
	e.chunk = 1 << 20
	lowest := freeOf(t, dst)
	e.hookChunk = func(off int64) {
		lowest = min(lowest, freeOf(t, dst))
		if off == 4<<20 {
			// 14 MiB left: above min_free, but not enough for the
			// next range (16 MiB) and the floor.
			writeFile(t, filepath.Join(dst, "filler"), make([]byte, freeOf(t, dst)-14<<20))
		}
	}
	root := filepath.Join(dst, ".relinkd")
	_, err := e.Rescue(ctx(t), pin(t, e, c), Destination{Root: root, Rel: "sparse", MinFreeBytes: minFree})
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "must leave") {
		t.Fatalf("want ErrNoSpace from the min_free check, got %v", err)
	}
	if lowest < minFree {
		t.Errorf("free space went down to %d during the copy, below min_free %d", lowest, minFree)
	}
	if files := regularFiles(t, root); len(files) != 0 {
		t.Errorf("left behind: %v", files)
	}
}

// TestFollowTruncatedBeforeCopy: a copytruncate between Follow's fstat and
// its copy must not append zeros the source never held.
func TestFollowTruncatedBeforeCopy(t *testing.T) {
	h, e, p, res := rescuedWriter(t)
	h.Do(t, testproc.Append(0, 100_000, 1, 0))
	truncated := false
	e.hookPoll = func(size int64) {
		if !truncated && size > 5 {
			truncated = true
			h.Do(t, testproc.Truncate(0, 0)) // right after the poll's fstat
		}
	}
	fres, err := p.Follow(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, res.Path)
	if !strings.HasPrefix(string(got), "hello") || strings.Contains(string(got), "\x00") {
		t.Fatalf("rescued %d bytes starting %q, with zeros the source never held", len(got), got[:min(len(got), 8)])
	}
	if fres.Bytes != int64(len(got)) {
		t.Errorf("result says %d bytes, file has %d", fres.Bytes, len(got))
	}
	// The engine says why; pkg/pipeline logs "follow stopped" from it
	// (TestFollowStoppedEvents).
	if fres.Followed || fres.Stopped != StopTruncation {
		t.Errorf("a follow ended by truncation: Followed %v, Stopped %q; want false, %q", fres.Followed, fres.Stopped, StopTruncation)
	}
}

// TestFollowCancelledMidAppend: a follow cancelled inside an append keeps
// what it copied, and the file, the result and the sidecar agree.
func TestFollowCancelledMidAppend(t *testing.T) {
	h, e, p, res := rescuedWriter(t)
	h.Do(t, testproc.Append(0, 1<<20, 4, 0))
	e.chunk = 1 << 20
	cx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.hookChunk = func(int64) { cancel() }
	fres, err := p.Follow(cx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	var st unix.Stat_t
	must(t, unix.Stat(res.Path, &st))
	var s Sidecar
	must(t, json.Unmarshal(readAll(t, res.Sidecar), &s))
	if fres.Followed || st.Size != fres.Bytes || s.Bytes != fres.Bytes || fres.Bytes <= 5 {
		t.Errorf("file %d bytes, result %+v, sidecar %d bytes: want them equal, above 5, not followed", st.Size, fres, s.Bytes)
	}
	want := append([]byte("hello"), appended(1<<20, 4)...)[:fres.Bytes]
	mustEqualBytes(t, "kept", want, readAll(t, res.Path))
	if fres.Stopped != StopShutdown {
		t.Errorf("Stopped %q, want %q", fres.Stopped, StopShutdown)
	}
}

// TestCancelledRescueIsNotAFailure: a rescue abandoned by its caller
// returns its context's error, which pkg/pipeline logs as "rescue
// cancelled" (info), not as "rescue failed" (TestOutcomes, cancel).
func TestCancelledRescueIsNotAFailure(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 64)
	src := filepath.Join(mnt, "big")
	writeFile(t, src, randomBytes(4<<20, 9))
	_, c := holdDeleted(t, src, "r")
	e := newEngine(t, Options{})
	e.chunk = 1 << 20
	cx, cancel := context.WithCancel(ctx(t))
	e.hookChunk = func(int64) { cancel() }
	_, err := e.Rescue(cx, pin(t, e, c), Destination{Root: filepath.Join(mnt, "r"), Rel: "big"})
	var re *RescueError
	if !errors.Is(err, context.Canceled) || !errors.As(err, &re) || re.Method != MethodCopy {
		t.Fatalf("want a *RescueError of the copy wrapping context.Canceled, got %v", err)
	}
	if files := regularFiles(t, filepath.Join(mnt, "r")); len(files) != 0 {
		t.Errorf("left behind: %v", files)
	}
}

// TestNoCapabilities: file capabilities, like set-id bits, do not survive
// on the copy.
func TestNoCapabilities(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "ext4", 32)
	src := filepath.Join(mnt, "prog")
	writeFile(t, src, randomBytes(10000, 3))
	must(t, os.Chmod(src, 0o755|os.ModeSetuid))
	// cap_setuid+ep (VFS_CAP_REVISION_2, effective, permitted bit 7).
	capv := []byte{0x01, 0x00, 0x00, 0x02, 0x80, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	must(t, unix.Setxattr(src, capabilityXattr, capv, 0))
	must(t, unix.Setxattr(src, "user.note", []byte("kept"), 0))
	_, c := holdDeleted(t, src, "r")
	e := newEngine(t, Options{})
	res, err := resultOf(e.Rescue(ctx(t), pin(t, e, c), Destination{Root: filepath.Join(mnt, ".relinkd"), Rel: "prog"}))
	must(t, err)
	var st unix.Stat_t
	must(t, unix.Stat(res.Path, &st))
	if st.Mode&0o7777 != 0o755 {
		t.Errorf("mode %#o, want 0755 (set-uid dropped)", st.Mode&0o7777)
	}
	if _, err := unix.Getxattr(res.Path, capabilityXattr, make([]byte, 64)); !errors.Is(err, unix.ENODATA) {
		t.Errorf("security.capability on the copy: want ENODATA, got %v", err)
	}
	buf := make([]byte, 16)
	if n, err := unix.Getxattr(res.Path, "user.note", buf); err != nil || string(buf[:n]) != "kept" {
		t.Errorf("user.note: %q, %v (other attributes must still be copied)", buf[:max(n, 0)], err)
	}
}

// TestSidecarNonUTF8: a name that is not UTF-8 keeps its exact bytes in
// the sidecar, as in the log events.
func TestSidecarNonUTF8(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 16)
	src := filepath.Join(mnt, "bad\xff\xfename")
	writeFile(t, src, []byte("x"))
	_, c := holdDeleted(t, src, "r")
	e := newEngine(t, Options{Sidecar: true})
	res, err := resultOf(e.Rescue(ctx(t), pin(t, e, c), Destination{Root: filepath.Join(mnt, ".relinkd"), Rel: "bad\xff\xfename"}))
	must(t, err)
	var s Sidecar
	must(t, json.Unmarshal(readAll(t, res.Sidecar), &s))
	if got, err := base64.StdEncoding.DecodeString(s.PathBase64); err != nil || string(got) != src {
		t.Errorf("path_base64 %q decodes to %q (%v), want %q", s.PathBase64, got, err, src)
	}
	if got, err := base64.StdEncoding.DecodeString(s.RescuedToBase64); err != nil || string(got) != res.Path {
		t.Errorf("rescued_to_base64 %q decodes to %q (%v), want %q", s.RescuedToBase64, got, err, res.Path)
	}
}

// TestMkdirNoSpace: a destination out of inodes is a space problem
// (ErrNoSpace), not a generic failure.
func TestMkdirNoSpace(t *testing.T) {
	testfs.RequireRoot(t)
	srcMnt := testfs.Mount(t, "tmpfs", 16)
	src := filepath.Join(srcMnt, "f")
	writeFile(t, src, []byte("data"))
	_, c := holdDeleted(t, src, "r")
	dir := t.TempDir()
	must(t, unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m,nr_inodes=8"))
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	root := filepath.Join(dir, ".relinkd")
	must(t, os.Mkdir(root, 0o700))
	for i := 0; ; i++ {
		if err := os.WriteFile(filepath.Join(dir, "fill"+string(rune('a'+i))), nil, 0o600); err != nil {
			break
		}
		if i > 100 {
			t.Fatal("tmpfs nr_inodes=8 took more than 100 files")
		}
	}
	e := newEngine(t, Options{})
	_, err := e.Rescue(ctx(t), pin(t, e, c), Destination{Root: root, Rel: "a/b/f"})
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("want ErrNoSpace when mkdir finds no inode, got %v", err)
	}
}
