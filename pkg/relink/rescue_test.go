package relink

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// TestRescueMethods rescues a deleted file (data, a hole, more data) on
// each filesystem and checks the method chosen, the bytes and the metadata.
func TestRescueMethods(t *testing.T) {
	testfs.RequireRoot(t)
	tests := []struct {
		name, fstype string
		want         Method
	}{
		{"ext4 copies", "ext4", MethodCopy},
		{"xfs reflinks", "xfs", MethodReflink},
		{"btrfs reflinks", "btrfs", MethodReflink},
		{"tmpfs copies", "tmpfs", MethodCopy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mnt := testfs.Mount(t, tt.fstype, 64)
			src := filepath.Join(mnt, "var/log/app.log")
			// 1 MiB of data, a 2 MiB hole, 70 kB of data.
			data := append(randomBytes(1<<20+123, 1), make([]byte, 2<<20)...)
			data = append(data, randomBytes(70_000, 2)...)
			writeFile(t, src, data[:1<<20+123])
			f, err := os.OpenFile(src, os.O_WRONLY, 0)
			must(t, err)
			_, err = f.WriteAt(data[3<<20+123:], 3<<20+123)
			must(t, err)
			must(t, f.Close())
			// Metadata to carry over: owner, group, mode, an ACL (whose
			// mask is the group bits), a user xattr, old timestamps.
			acl := posixACL([3]uint32{0x01, 6, 0xffffffff}, [3]uint32{0x02, 4, 1002},
				[3]uint32{0x04, 4, 0xffffffff}, [3]uint32{0x10, 4, 0xffffffff}, [3]uint32{0x20, 0, 0xffffffff})
			must(t, os.Chown(src, 1000, 1001))
			must(t, unix.Setxattr(src, "user.relinkd-test", []byte("kept"), 0))
			must(t, unix.Setxattr(src, "system.posix_acl_access", acl, 0))
			must(t, os.Chmod(src, 0o640))
			atime, mtime := time.Unix(1_600_000_000, 111), time.Unix(1_650_000_000, 222)
			must(t, os.Chtimes(src, atime, mtime))

			_, c := holdDeleted(t, src, "r")
			e := newEngine(t, Options{Hash: true, Sidecar: true})
			p := pin(t, e, c)
			root := filepath.Join(mnt, ".relinkd")
			res, err := resultOf(e.Rescue(ctx(t), p, Destination{Root: root, Rel: string(c.Path), Rule: "logs"}))
			if err != nil {
				t.Fatalf("rescue: %v", err)
			}
			if res.Method != tt.want {
				t.Errorf("method: want %s, got %s", tt.want, res.Method)
			}
			wantPath := filepath.Join(root, strings.TrimPrefix(src, "/"))
			if res.Path != wantPath {
				t.Errorf("path: want %s, got %s", wantPath, res.Path)
			}
			if res.Bytes != int64(len(data)) || res.SHA256 != sha(data) {
				t.Errorf("result: want %d bytes sha256 %s, got %d bytes sha256 %s", len(data), sha(data), res.Bytes, res.SHA256)
			}
			var st unix.Stat_t
			must(t, unix.Stat(res.Path, &st)) // before reading it moves atime
			mustEqualBytes(t, "rescued file", data, readAll(t, res.Path))
			if st.Uid != 1000 || st.Gid != 1001 || st.Mode&0o7777 != 0o640 {
				t.Errorf("owner/mode: want 1000:1001 0640, got %d:%d %#o", st.Uid, st.Gid, st.Mode&0o7777)
			}
			if got := time.Unix(st.Mtim.Unix()); !got.Equal(mtime) {
				t.Errorf("mtime: want %v, got %v", mtime, got)
			}
			if got := time.Unix(st.Atim.Unix()); !got.Equal(atime) {
				t.Errorf("atime: want %v, got %v", atime, got)
			}
			for name, want := range map[string][]byte{"user.relinkd-test": []byte("kept"), "system.posix_acl_access": acl} {
				got, err := xattrOf(res.Path, name)
				if err != nil || string(got) != string(want) {
					t.Errorf("xattr %s: want %x, got %x (%v)", name, want, got, err)
				}
			}
			if res.Method == MethodCopy {
				// The hole in the middle stays a hole.
				if alloc := st.Blocks * 512; alloc > int64(len(data))-(1<<20) {
					t.Errorf("copy allocates %d bytes for %d of data: holes not kept", alloc, len(data)-(2<<20))
				}
			}
			// Every directory the engine created is 0700.
			for d := filepath.Dir(res.Path); d != filepath.Dir(root); d = filepath.Dir(d) {
				fi, err := os.Stat(d)
				if err != nil || fi.Mode().Perm() != 0o700 {
					t.Errorf("directory %s: want mode 0700, got %v (%v)", d, fi.Mode().Perm(), err)
				}
			}
			checkSidecar(t, res, c.PID, c.FD, "logs")
		})
	}
}

func checkSidecar(t *testing.T, res Result, pid, fd int, rule string) {
	t.Helper()
	if res.Sidecar != res.Path+sidecarSuffix {
		t.Fatalf("sidecar: want %s, got %q", res.Path+sidecarSuffix, res.Sidecar)
	}
	var s Sidecar
	if err := json.Unmarshal(readAll(t, res.Sidecar), &s); err != nil {
		t.Fatal(err)
	}
	if s.RescuedTo != res.Path || s.Method != res.Method || s.Bytes != res.Bytes || s.PID != pid || s.FD != fd ||
		s.Rule == nil || *s.Rule != rule || s.SHA256 != res.SHA256 || s.Duration == "" || s.Path == "" {
		t.Errorf("sidecar %+v does not match result %+v", s, res)
	}
	fi, err := os.Stat(res.Sidecar)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("sidecar mode: want 0600, got %v (%v)", fi.Mode().Perm(), err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func xattrOf(path, name string) ([]byte, error) {
	b := make([]byte, 4096)
	n, err := unix.Getxattr(path, name, b)
	if err != nil {
		return nil, err
	}
	return b[:n], nil
}

// TestLink: an inode that can still be linked gets its name back, the same
// inode, zero bytes copied; one that cannot moves down the ladder.
func TestLink(t *testing.T) {
	testfs.RequireRoot(t)
	eachWalk(t, func(t *testing.T, w walker) {
		mnt := testfs.Mount(t, "ext4", 32)
		data := randomBytes(30_000, 3) // small: the holder gets it in its environment
		tests := []struct {
			name  string
			setup func(t *testing.T) *testproc.Holder
			want  Method
		}{
			{"deleted name with a second hard link", func(t *testing.T) *testproc.Holder {
				p := filepath.Join(mnt, "hard/a.dat")
				writeFile(t, p, data)
				return testproc.Start(t, testproc.Link(p, p+".other"), testproc.Open(p, "r"), testproc.Unlink(p))
			}, MethodLink},
			{"O_TMPFILE without O_EXCL", func(t *testing.T) *testproc.Holder {
				must(t, os.MkdirAll(filepath.Join(mnt, "tmp1"), 0o755))
				return testproc.Start(t, testproc.TmpFile(filepath.Join(mnt, "tmp1"), false), testproc.Write(0, string(data)))
			}, MethodLink},
			{"O_TMPFILE with O_EXCL", func(t *testing.T) *testproc.Holder {
				must(t, os.MkdirAll(filepath.Join(mnt, "tmp2"), 0o755))
				return testproc.Start(t, testproc.TmpFile(filepath.Join(mnt, "tmp2"), true), testproc.Write(0, string(data)))
			}, MethodCopy},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				h := tt.setup(t)
				c := candidateOf(t, h.PID, h.FDs[0])
				e := newEngine(t, Options{Sidecar: true})
				e.walk = w
				p := pin(t, e, c)
				res, err := resultOf(e.Rescue(ctx(t), p, Destination{Root: filepath.Join(mnt, ".relinkd"), Rel: string(c.Path)}))
				if err != nil {
					t.Fatalf("rescue: %v", err)
				}
				if res.Method != tt.want {
					t.Fatalf("method: want %s, got %s", tt.want, res.Method)
				}
				mustEqualBytes(t, "rescued", data, readAll(t, res.Path))
				var st unix.Stat_t
				must(t, unix.Stat(res.Path, &st))
				if same := st.Ino == c.Ino; same != (tt.want == MethodLink) {
					t.Errorf("inode %d, source %d: a link must be the same inode, a copy another", st.Ino, c.Ino)
				}
				if res.Bytes != int64(len(data)) {
					t.Errorf("bytes: want %d, got %d", len(data), res.Bytes)
				}
			})
		}
	})
}

// TestLinkOtherMount: a link cannot cross mounts (EXDEV); the ladder moves
// on to a copy.
func TestLinkOtherMount(t *testing.T) {
	testfs.RequireRoot(t)
	src := testfs.Mount(t, "tmpfs", 16)
	dst := testfs.Mount(t, "tmpfs", 16)
	p0 := filepath.Join(src, "f")
	data := randomBytes(10_000, 4)
	writeFile(t, p0, data)
	h := testproc.Start(t, testproc.Link(p0, p0+".2"), testproc.Open(p0, "r"), testproc.Unlink(p0))
	c := candidateOf(t, h.PID, h.FDs[0])
	e := newEngine(t, Options{})
	res, err := resultOf(e.Rescue(ctx(t), pin(t, e, c), Destination{Root: filepath.Join(dst, "r"), Rel: "f"}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Method != MethodCopy {
		t.Errorf("method: want copy, got %s", res.Method)
	}
	mustEqualBytes(t, "rescued", data, readAll(t, res.Path))

	// With copy not allowed, nothing works: ErrUnsupported, nothing left.
	h2 := testproc.Start(t, testproc.Link(p0+".2", p0), testproc.Open(p0, "r"), testproc.Unlink(p0))
	c2 := candidateOf(t, h2.PID, h2.FDs[0])
	e2 := newEngine(t, Options{Methods: []Method{MethodLink, MethodReflink}})
	_, err = e2.Rescue(ctx(t), pin(t, e2, c2), Destination{Root: filepath.Join(dst, "r2"), Rel: "f"})
	var re *RescueError
	if !errors.Is(err, ErrUnsupported) || !errors.As(err, &re) || re.PID != h2.PID {
		t.Fatalf("want ErrUnsupported in a *RescueError, got %v", err)
	}
	if files := regularFiles(t, filepath.Join(dst, "r2")); len(files) != 0 {
		t.Errorf("left behind: %v", files)
	}
}

// TestSparse: 1 GiB apparent, 4 MiB of data: the copy allocates about the
// data, not the apparent size.
func TestSparse(t *testing.T) {
	testfs.RequireRoot(t)
	for _, fstype := range []string{"ext4", "tmpfs"} {
		t.Run(fstype, func(t *testing.T) {
			mnt := testfs.Mount(t, fstype, 64)
			src := filepath.Join(mnt, "sparse.img")
			f, err := os.Create(src)
			must(t, err)
			offsets := []int64{0, 300 << 20, 700 << 20, 1<<30 - 1<<20}
			pieces := map[int64][]byte{}
			for i, off := range offsets {
				pieces[off] = randomBytes(1<<20, uint64(10+i))
				_, err := f.WriteAt(pieces[off], off)
				must(t, err)
			}
			must(t, f.Close())
			_, c := holdDeleted(t, src, "r")
			if c.Size != 1<<30 {
				t.Fatalf("source size %d", c.Size)
			}
			e := newEngine(t, Options{})
			res, err := resultOf(e.Rescue(ctx(t), pin(t, e, c), Destination{Root: filepath.Join(mnt, ".relinkd"), Rel: "sparse.img"}))
			if err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			must(t, unix.Stat(res.Path, &st))
			if st.Size != 1<<30 || res.Bytes != 1<<30 {
				t.Errorf("size: want 1 GiB, got %d (result %d)", st.Size, res.Bytes)
			}
			if alloc := st.Blocks * 512; alloc > 5<<20 {
				t.Errorf("copy allocates %d bytes (%.1f MiB), want at most 5 MiB", alloc, float64(alloc)/(1<<20))
			}
			out, err := os.Open(res.Path)
			must(t, err)
			defer out.Close()
			for off, want := range pieces {
				got := make([]byte, len(want))
				_, err := out.ReadAt(got, off)
				must(t, err)
				mustEqualBytes(t, "piece", want, got)
			}
			zero := make([]byte, 4096)
			for _, off := range []int64{1 << 20, 500 << 20, 1<<30 - 2<<20} {
				got := make([]byte, 4096)
				_, err := out.ReadAt(got, off)
				must(t, err)
				mustEqualBytes(t, "hole", zero, got)
			}
		})
	}
}

// TestHolderExitsAfterPin: once pinned, the data no longer depends on the
// holder.
func TestHolderExitsAfterPin(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "ext4", 32)
	src := filepath.Join(mnt, "gone.log")
	data := randomBytes(2<<20, 5)
	writeFile(t, src, data)
	h, c := holdDeleted(t, src, "r")
	e := newEngine(t, Options{Hash: true})
	p := pin(t, e, c)
	h.Kill()
	<-h.Done()
	if _, err := e.Pin(c); !errors.Is(err, ErrVanished) {
		t.Errorf("pin after exit: want ErrVanished, got %v", err)
	}
	res, err := resultOf(e.Rescue(ctx(t), p, Destination{Root: filepath.Join(mnt, ".relinkd"), Rel: string(c.Path)}))
	if err != nil {
		t.Fatal(err)
	}
	if res.SHA256 != sha(data) {
		t.Errorf("sha256: want %s, got %s", sha(data), res.SHA256)
	}
	mustEqualBytes(t, "rescued", data, readAll(t, res.Path))
}

// TestPinRefuses: a reused pid, a swapped file, a non-regular file and a
// vanished descriptor are refused with the right sentinel.
func TestPinRefuses(t *testing.T) {
	testfs.RequireRoot(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "f")
	writeFile(t, src, []byte("x"))
	h := testproc.Start(t, testproc.Open(src, "r"), testproc.Unlink(src), testproc.Pipe(), testproc.Memfd("m"))
	good := candidateOf(t, h.PID, h.FDs[0])
	tests := []struct {
		name string
		edit func(c *scanner.Candidate)
		want error
	}{
		{"pid reused", func(c *scanner.Candidate) { c.StartTime++ }, ErrIdentity},
		{"file swapped", func(c *scanner.Candidate) { c.Ino++ }, ErrIdentity},
		{"other device", func(c *scanner.Candidate) { c.Dev++ }, ErrIdentity},
		{"pipe", func(c *scanner.Candidate) { *c = candidateOf(t, h.PID, h.FDs[1]) }, ErrNotRegular},
		{"memfd", func(c *scanner.Candidate) { *c = candidateOf(t, h.PID, h.FDs[3]) }, ErrNotRegular},
		{"fd closed", func(c *scanner.Candidate) { c.FD = 999 }, ErrVanished},
		{"no such process", func(c *scanner.Candidate) { c.PID = 1 << 22; c.StartTime = 0 }, ErrVanished},
	}
	e := newEngine(t, Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.edit(&c)
			p, err := e.Pin(c)
			if err == nil {
				p.Close()
			}
			var re *RescueError
			if !errors.Is(err, tt.want) || !errors.As(err, &re) || re.Op != "pin" {
				t.Fatalf("want %v in a pin *RescueError, got %v", tt.want, err)
			}
		})
	}
	p, err := e.Pin(good)
	if err != nil {
		t.Fatalf("the unedited candidate must pin: %v", err)
	}
	p.Close()

	// A real swap: the holder closes the descriptor and opens another
	// file, which gets the same number (open(2) takes the lowest free).
	other := filepath.Join(dir, "other")
	writeFile(t, other, []byte("y"))
	h.Do(t, testproc.Close(0), testproc.Open(other, "r"))
	if _, err := e.Pin(good); !errors.Is(err, ErrIdentity) {
		t.Fatalf("swapped descriptor: want ErrIdentity, got %v", err)
	}
}

// TestRescueExitedLeader: a holder whose main thread has exited is reached
// through one of its live threads (/proc/PID/task/TID/fd), and rescued.
func TestRescueExitedLeader(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "python3")
	mnt := testfs.Mount(t, "tmpfs", 16)
	src := filepath.Join(mnt, "orphan.log")
	writeFile(t, src, []byte("still here"))
	pid := testproc.StartExitedLeader(t, src)
	res, err := scanner.New(scanner.Options{}, zaptest.NewLogger(t)).SweepPIDs(ctx(t), []int{pid})
	if err != nil || len(res.Candidates) != 1 || res.Candidates[0].TID == 0 {
		t.Fatalf("sweep: want one candidate reached through a thread, got %+v, %v", res.Candidates, err)
	}
	e := newEngine(t, Options{})
	r, err := resultOf(e.Rescue(ctx(t), pin(t, e, res.Candidates[0]), Destination{Root: filepath.Join(mnt, ".relinkd"), Rel: "orphan.log"}))
	if err != nil {
		t.Fatal(err)
	}
	mustEqualBytes(t, "rescued", []byte("still here"), readAll(t, r.Path))
}
