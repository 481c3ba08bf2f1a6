package relink

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
)

// TestRestoreMethods rescues a file, then restores it: link where the
// target is on the rescued file's mount, else reflink, else copy; the
// content, holes, owner, mode, times and extended attributes are the
// rescued file's, and the rescue's sidecar verifies against its file.
func TestRestoreMethods(t *testing.T) {
	testfs.RequireRoot(t)
	for _, tc := range []struct {
		name, fstype string
		methods      []Method
		otherFS      bool // restore onto another tmpfs
		want         Method
	}{
		{"ext4 same mount links", "ext4", nil, false, MethodLink},
		{"ext4 without link copies", "ext4", []Method{MethodReflink, MethodCopy}, false, MethodCopy},
		{"xfs without link reflinks", "xfs", []Method{MethodReflink, MethodCopy}, false, MethodReflink},
		{"another filesystem copies", "tmpfs", nil, true, MethodCopy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mnt := testfs.Mount(t, tc.fstype, 64)
			src := filepath.Join(mnt, "srv/db/app.db")
			data := append(randomBytes(200_000, 7), make([]byte, 3<<20)...)
			data = append(data, randomBytes(5000, 8)...)
			writeFile(t, src, data[:200_000])
			f, err := os.OpenFile(src, os.O_WRONLY, 0)
			must(t, err)
			_, err = f.WriteAt(data[len(data)-5000:], int64(len(data)-5000))
			must(t, err)
			must(t, f.Close())
			must(t, os.Chown(src, 1000, 1001))
			must(t, unix.Setxattr(src, "user.relinkd-test", []byte("kept"), 0))
			must(t, os.Chmod(src, 0o640))
			atime, mtime := time.Unix(1_600_000_000, 0), time.Unix(1_650_000_000, 0)
			must(t, os.Chtimes(src, atime, mtime))

			_, c := holdDeleted(t, src, "r")
			e := newEngine(t, Options{Sidecar: true, Methods: tc.methods})
			p := pin(t, e, c)
			root := filepath.Join(mnt, ".relinkd")
			res, err := resultOf(e.Rescue(ctx(t), p, Destination{Root: root, Rel: string(c.Path)}))
			must(t, err)

			// The sidecar the engine wrote is one ReadSidecar takes and
			// that verifies against its file.
			s, err := ReadSidecar(readAll(t, res.Sidecar))
			must(t, err)
			must(t, s.Verify(found(t, res.Path, res.Sidecar)))

			rel, err := filepath.Rel(root, res.Path)
			must(t, err)
			in, err := e.OpenRescued(root, "", rel)
			must(t, err)
			defer in.Close()
			back := filepath.Join(mnt, "srv/back")
			if tc.otherFS {
				back = filepath.Join(testfs.Mount(t, "tmpfs", 64), "back")
			}
			target := filepath.Join(back, "app.db")
			if _, err := e.CheckTarget(Target{Path: target}); err == nil {
				t.Errorf("CheckTarget without Mkdir accepts a missing directory")
			}
			ts, err := e.CheckTarget(Target{Path: target, Mkdir: true})
			if err != nil || ts.Missing != back || ts.Exists {
				t.Errorf("CheckTarget = %+v, %v; want Missing %s", ts, err, back)
			}
			r, err := e.Restore(ctx(t), in, Target{Path: target, Mkdir: true})
			must(t, err)
			if r.Method != tc.want || r.Path != target || r.Bytes != int64(len(data)) || r.Replaced {
				t.Errorf("restored %+v; want method %s, %d bytes at %s", r, tc.want, len(data), target)
			}
			var st, rst unix.Stat_t
			must(t, unix.Stat(target, &st))
			must(t, unix.Stat(res.Path, &rst))
			mustEqualBytes(t, "restored file", data, readAll(t, target))
			if (st.Ino == rst.Ino) != (tc.want == MethodLink) {
				t.Errorf("restored inode %d, rescued %d: a link shares it, nothing else does", st.Ino, rst.Ino)
			}
			if st.Uid != 1000 || st.Gid != 1001 || st.Mode&0o7777 != 0o640 {
				t.Errorf("owner/mode: want 1000:1001 0640, got %d:%d %#o", st.Uid, st.Gid, st.Mode&0o7777)
			}
			if got := time.Unix(st.Mtim.Unix()); !got.Equal(mtime) {
				t.Errorf("mtime: want %v, got %v", mtime, got)
			}
			if got, err := xattrOf(target, "user.relinkd-test"); err != nil || string(got) != "kept" {
				t.Errorf("xattr: %q %v", got, err)
			}
			if alloc := st.Blocks * 512; tc.want == MethodCopy && alloc > 1<<20 {
				t.Errorf("copy allocates %d bytes for %d of data: holes not kept", alloc, 205_000)
			}
			if got := regularFiles(t, back); len(got) != 1 {
				t.Errorf("target directory holds %q, want the restored file only", got)
			}
			fi, err := os.Stat(back)
			if err != nil || fi.Mode().Perm() != 0o755&^umask() {
				t.Errorf("created directory: mode %v (%v), want %#o", fi.Mode().Perm(), err, 0o755&^umask())
			}
		})
	}
}

func umask() os.FileMode {
	m := unix.Umask(0)
	unix.Umask(m)
	return os.FileMode(m)
}

// found describes a rescued file and its sidecar for Verify.
func found(t *testing.T, path, sidecar string) Found {
	t.Helper()
	var st, sst unix.Stat_t
	must(t, unix.Lstat(path, &st))
	must(t, unix.Lstat(sidecar, &sst))
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	btime, err := birthTime(int(f.Fd()))
	must(t, err)
	return Found{Path: path, Dev: st.Dev, Ino: st.Ino, Nlink: uint32(st.Nlink), Size: st.Size, BirthTime: btime,
		Mtime: time.Unix(st.Mtim.Unix()), SidecarMtime: time.Unix(sst.Mtim.Unix())}
}

// TestRestoreNeverOverwrites: an existing file is refused without Replace
// and left as it was; with Replace it is replaced in one rename, leaving no
// temporary behind; a symlink in the path or in the file's place is
// refused, and nothing is written through it; a directory on another
// filesystem than the rescued file's is refused.
func TestRestoreNeverOverwrites(t *testing.T) {
	testfs.RequireRoot(t)
	eachWalk(t, func(t *testing.T, w walker) {
		mnt := testfs.Mount(t, "tmpfs", 16)
		rescued := filepath.Join(mnt, "rescued")
		writeFile(t, rescued, []byte("rescued data"))
		dir := filepath.Join(mnt, "app")
		existing := filepath.Join(dir, "app.log")
		writeFile(t, existing, []byte("newer data"))
		elsewhere := t.TempDir()
		must(t, os.Symlink(elsewhere, filepath.Join(mnt, "via")))
		must(t, os.Symlink(filepath.Join(elsewhere, "victim"), filepath.Join(dir, "planted.log")))

		for _, methods := range [][]Method{nil, {MethodCopy}} {
			e := newEngine(t, Options{Methods: methods})
			e.walk = w
			// Both CheckTarget and Restore must refuse.
			restore := func(tgt Target) (Restored, error) {
				in, err := os.Open(rescued)
				must(t, err)
				defer in.Close()
				if _, err := e.CheckTarget(tgt); err != nil {
					if _, rerr := e.Restore(ctx(t), in, tgt); rerr == nil {
						return Restored{}, errors.New("CheckTarget refused, Restore did not")
					}
					return Restored{}, err
				}
				return e.Restore(ctx(t), in, tgt)
			}
			if _, err := restore(Target{Path: existing}); !errors.Is(err, ErrExists) {
				t.Errorf("%v: over an existing file: %v, want ErrExists", methods, err)
			}
			if got := readAll(t, existing); string(got) != "newer data" {
				t.Errorf("%v: the existing file changed: %q", methods, got)
			}
			for _, tgt := range []Target{
				{Path: filepath.Join(mnt, "via/app.log"), Replace: true, Mkdir: true},
				{Path: filepath.Join(mnt, "via/sub/app.log"), Replace: true, Mkdir: true},
				{Path: filepath.Join(dir, "planted.log"), Replace: true},
			} {
				if _, err := restore(tgt); !errors.Is(err, ErrUnsafePath) {
					t.Errorf("%v: through a symlink %s: %v, want ErrUnsafePath", methods, tgt.Path, err)
				}
			}
			if got := regularFiles(t, elsewhere); len(got) != 0 {
				t.Fatalf("%v: written through a symlink: %q", methods, got)
			}
			if l, err := os.Readlink(filepath.Join(dir, "planted.log")); err != nil || l != filepath.Join(elsewhere, "victim") {
				t.Errorf("%v: the planted symlink changed: %q %v", methods, l, err)
			}
			var st unix.Stat_t
			must(t, unix.Stat(dir, &st))
			if _, err := restore(Target{Path: filepath.Join(dir, "new.log"), Dev: st.Dev + 1}); !errors.Is(err, ErrOtherFS) {
				t.Errorf("%v: directory on another device: %v, want ErrOtherFS", methods, err)
			}
		}

		e := newEngine(t, Options{})
		e.walk = w
		in, err := os.Open(rescued)
		must(t, err)
		defer in.Close()
		if ts, err := e.CheckTarget(Target{Path: existing, Replace: true}); err != nil || !ts.Exists {
			t.Errorf("CheckTarget with Replace = %+v, %v; want Exists", ts, err)
		}
		var before unix.Stat_t
		must(t, unix.Stat(existing, &before))
		r, err := e.Restore(ctx(t), in, Target{Path: existing, Replace: true})
		must(t, err)
		var after unix.Stat_t
		must(t, unix.Stat(existing, &after))
		if !r.Replaced || string(readAll(t, existing)) != "rescued data" || after.Ino == before.Ino {
			t.Errorf("replace: %+v, content %q, inode %d (was %d)", r, readAll(t, existing), after.Ino, before.Ino)
		}
		names, err := os.ReadDir(dir)
		must(t, err)
		for _, n := range names {
			if strings.Contains(n.Name(), "relinkd-tmp") {
				t.Errorf("temporary %s left behind", n.Name())
			}
		}
		// Restoring by link over the file that already is that inode
		// (restored by link before) leaves no temporary either.
		if r, err := e.Restore(ctx(t), in, Target{Path: existing, Replace: true}); err != nil {
			t.Errorf("again: %v", err)
		} else if r.Method == MethodLink {
			if _, err := e.Restore(ctx(t), in, Target{Path: existing, Replace: true}); err != nil {
				t.Errorf("over itself: %v", err)
			}
			names, _ := os.ReadDir(dir)
			for _, n := range names {
				if strings.Contains(n.Name(), "relinkd-tmp") {
					t.Errorf("over itself: temporary %s left behind", n.Name())
				}
			}
		}
	})
}

// TestOpenRescued: the rescued file is opened beneath its root, never
// through a symlink in its place or in a directory's.
func TestOpenRescued(t *testing.T) {
	testfs.RequireRoot(t)
	eachWalk(t, func(t *testing.T, w walker) {
		root := filepath.Join(t.TempDir(), "root")
		writeFile(t, filepath.Join(root, "var/log/a.log.x"), []byte("a"))
		outside := t.TempDir()
		writeFile(t, filepath.Join(outside, "secret"), []byte("secret"))
		must(t, os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "var/log/link.x")))
		must(t, os.Symlink(outside, filepath.Join(root, "var/out")))
		e := newEngine(t, Options{})
		e.walk = w
		f, err := e.OpenRescued(root, "", "var/log/a.log.x")
		must(t, err)
		f.Close()
		for _, rel := range []string{"var/log/link.x", "var/out/secret"} {
			if f, err := e.OpenRescued(root, "", rel); err == nil {
				f.Close()
				t.Errorf("OpenRescued(%q) opened it", rel)
			} else if !errors.Is(err, ErrUnsafePath) {
				t.Errorf("OpenRescued(%q): %v, want ErrUnsafePath", rel, err)
			}
		}
	})
}
