package relink

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
)

// TestPlantedSymlinks: a symlink anywhere on the way to the destination
// is refused, and nothing is written outside the rescue root.
func TestPlantedSymlinks(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 16)
	src := filepath.Join(mnt, "secret")
	writeFile(t, src, []byte("data that must not leak"))
	_, c := holdDeleted(t, src, "r")
	tests := []struct {
		name  string
		plant func(t *testing.T, root, outside string)
	}{
		{"root is a symlink", func(t *testing.T, root, outside string) {
			must(t, os.Symlink(outside, root))
		}},
		{"first directory", func(t *testing.T, root, outside string) {
			must(t, os.Mkdir(root, 0o700))
			must(t, os.Symlink(outside, filepath.Join(root, "var")))
		}},
		{"intermediate directory", func(t *testing.T, root, outside string) {
			must(t, os.MkdirAll(filepath.Join(root, "var"), 0o700))
			must(t, os.Symlink(outside, filepath.Join(root, "var/log")))
		}},
		{"relative symlink", func(t *testing.T, root, outside string) {
			must(t, os.MkdirAll(filepath.Join(root, "var"), 0o700))
			rel, err := filepath.Rel(filepath.Join(root, "var"), outside)
			must(t, err)
			must(t, os.Symlink(rel, filepath.Join(root, "var/log")))
		}},
		{"leaf", func(t *testing.T, root, outside string) {
			must(t, os.MkdirAll(filepath.Join(root, "var/log"), 0o700))
			must(t, os.Symlink(filepath.Join(outside, "target"), filepath.Join(root, "var/log/app.log")))
		}},
		{"root writable by others", func(t *testing.T, root, outside string) {
			must(t, os.Mkdir(root, 0o700))
			must(t, os.Chmod(root, 0o777))
		}},
		{"root owned by another user", func(t *testing.T, root, outside string) {
			must(t, os.Mkdir(root, 0o700))
			must(t, os.Chown(root, 1000, 1000))
		}},
	}
	eachWalk(t, func(t *testing.T, w walker) {
		e := newEngine(t, Options{Sidecar: true})
		e.walk = w
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				outside := t.TempDir()
				root := filepath.Join(mnt, w.String()[:1]+"rescue"+strings.Repeat("x", i))
				tt.plant(t, root, outside)
				p := pin(t, e, c)
				_, err := e.Rescue(ctx(t), p, Destination{Root: root, Rel: "var/log/app.log"})
				if !errors.Is(err, ErrUnsafePath) {
					t.Fatalf("want ErrUnsafePath, got %v", err)
				}
				t.Log(err)
				if files := regularFiles(t, outside); len(files) != 0 {
					t.Errorf("written outside the rescue root: %v", files)
				}
				if ents, _ := os.ReadDir(outside); len(ents) != 0 {
					t.Errorf("created outside the rescue root: %v", ents)
				}
			})
		}
	})
}

// TestBeneathComponents: the walk takes single components only; anything
// that could climb or name several levels is refused before a syscall.
func TestBeneathComponents(t *testing.T) {
	dir := t.TempDir()
	dfd, err := openDir(dir)
	must(t, err)
	defer unix.Close(dfd)
	must(t, os.Mkdir(filepath.Join(dir, "sub"), 0o700))
	eachWalk(t, func(t *testing.T, w walker) {
		for _, name := range []string{"", ".", "..", "a/b", "/etc", "sub/.."} {
			if fd, err := w.beneath(dfd, name); !errors.Is(err, ErrUnsafePath) {
				if err == nil {
					unix.Close(fd)
				}
				t.Errorf("beneath(%q): want ErrUnsafePath, got %v", name, err)
			}
		}
		fd, err := w.beneath(dfd, "sub")
		if err != nil {
			t.Fatalf("beneath(sub): %v", err)
		}
		unix.Close(fd)
		must(t, os.WriteFile(filepath.Join(dir, "file"), nil, 0o600))
		if _, err := w.beneath(dfd, "file"); !errors.Is(err, unix.ENOTDIR) {
			t.Errorf("beneath(file): want ENOTDIR, got %v", err)
		}
	})
}

// TestSplitRel: hostile relative paths stay below the root.
func TestSplitRel(t *testing.T) {
	tests := []struct {
		name, rel string
		dirs      []string
		leaf      string
	}{
		{"plain", "var/log/app.log", []string{"var", "log"}, "app.log"},
		{"absolute", "/var/log/app.log", []string{"var", "log"}, "app.log"},
		{"dot dot", "../../etc/passwd", []string{"etc"}, "passwd"},
		{"inner dot dot", "a/../../b/./c", []string{"b"}, "c"},
		{"empty", "", nil, "unnamed"},
		{"only dots", "/../..", nil, "unnamed"},
		{"newline kept", "a/x\ny", []string{"a"}, "x\ny"},
		{"long leaf cut", strings.Repeat("n", 300), nil, strings.Repeat("n", maxLeaf)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dirs, leaf := splitRel(tt.rel)
			if strings.Join(dirs, "/") != strings.Join(tt.dirs, "/") || leaf != tt.leaf {
				t.Errorf("splitRel(%q): want %q %q, got %q %q", tt.rel, tt.dirs, tt.leaf, dirs, leaf)
			}
		})
	}
}

// TestFullDestination: a destination that fills up gives ErrNoSpace, no
// visible partial file and no stray temp, whether the preallocation or
// (on ext2, which has none) the copy runs out of room; a MinFreeBytes
// guard refuses before writing.
func TestFullDestination(t *testing.T) {
	testfs.RequireRoot(t)
	srcMnt := testfs.Mount(t, "tmpfs", 64)
	src := filepath.Join(srcMnt, "big")
	writeFile(t, src, randomBytes(24<<20, 11))
	_, c := holdDeleted(t, src, "r")
	tests := []struct {
		name, fstype string
		sizeMiB      int
		tmpfile      bool
		minFree      uint64
	}{
		{"tmpfs 8m", "tmpfs", 8, true, 0},
		{"tmpfs 8m hidden temp", "tmpfs", 8, false, 0},
		{"ext4 20m", "ext4", 20, true, 0},
		{"ext4 20m hidden temp", "ext4", 20, false, 0},
		// No fallocate on ext2: the copy itself runs out of room.
		{"ext2 20m", "ext2", 20, true, 0},
		{"ext2 20m hidden temp", "ext2", 20, false, 0},
		{"guard refuses up front", "tmpfs", 48, true, 30 << 20},
		{"guard stops during the copy", "tmpfs", 48, true, 8 << 20},
	}
	eachWalk(t, func(t *testing.T, w walker) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				dst := testfs.Mount(t, tt.fstype, tt.sizeMiB)
				e := newEngine(t, Options{Sidecar: true})
				e.walk = w
				e.noTmpfile = !tt.tmpfile
				e.chunk = 1 << 20
				if tt.name == "guard stops during the copy" {
					// Something else fills the disk while we copy, down to
					// 4 MiB free, below the 8 MiB guard. (The copy's own
					// blocks are reserved already.)
					filler := filepath.Join(dst, "filler")
					e.hookChunk = func(off int64) {
						if off == 4<<20 {
							var fs unix.Statfs_t
							must(t, unix.Statfs(dst, &fs))
							writeFile(t, filler, make([]byte, fs.Bavail*uint64(fs.Bsize)-4<<20))
						}
					}
				}
				root := filepath.Join(dst, ".relinkd")
				_, err := e.Rescue(ctx(t), pin(t, e, c), Destination{Root: root, Rel: "srv/big", MinFreeBytes: tt.minFree})
				if !errors.Is(err, ErrNoSpace) {
					t.Fatalf("want ErrNoSpace, got %v", err)
				}
				t.Log(err)
				if files := regularFiles(t, root); len(files) != 0 {
					t.Errorf("left behind: %v", files)
				}
			})
		}
	})
}

// TestPreallocation: the copy reserves each data range before it copies
// it, so a destination that runs out of room between two ranges fails
// there, cleanly; a filesystem that cannot preallocate still gets a copy.
func TestPreallocation(t *testing.T) {
	testfs.RequireRoot(t)
	t.Run("room gone before the second data range", func(t *testing.T) {
		c := holdTwoRanges(t)
		dst := testfs.Mount(t, "tmpfs", 48)
		e := newEngine(t, Options{})
		e.chunk = 1 << 20
		e.hookChunk = func(off int64) {
			if off == 4<<20 {
				// The first range is copied; something else takes
				// the room the second one needs.
				writeFile(t, filepath.Join(dst, "filler"), make([]byte, 40<<20))
			}
		}
		root := filepath.Join(dst, ".relinkd")
		_, err := e.Rescue(ctx(t), pin(t, e, c), Destination{Root: root, Rel: "sparse"})
		if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "preallocate") {
			t.Fatalf("want ErrNoSpace from the preallocation, got %v", err)
		}
		if files := regularFiles(t, root); len(files) != 0 {
			t.Errorf("left behind: %v", files)
		}
		var fs unix.Statfs_t
		must(t, unix.Statfs(dst, &fs))
		if free := fs.Bavail * uint64(fs.Bsize); free < 7<<20 {
			t.Errorf("after the failed rescue %d bytes are free, want the first range's 4 MiB back (at least 7 MiB)", free)
		}
	})
	t.Run("filesystem without fallocate", func(t *testing.T) {
		mnt := testfs.Mount(t, "ext2", 64)
		data := randomBytes(6<<20+123, 23)
		src := filepath.Join(mnt, "app.log")
		writeFile(t, src, data)
		_, c := holdDeleted(t, src, "r")
		core, logs := observer.New(zapcore.DebugLevel)
		e := New(Options{}, zap.New(core))
		res, err := resultOf(e.Rescue(ctx(t), pin(t, e, c), Destination{Root: filepath.Join(mnt, ".relinkd"), Rel: "app.log"}))
		if err != nil {
			t.Fatal(err)
		}
		if res.Method != MethodCopy {
			t.Errorf("method %s, want copy", res.Method)
		}
		mustEqualBytes(t, "rescued", data, readAll(t, res.Path))
		if logs.FilterMessage("preallocation unsupported, copying without").Len() != 1 {
			t.Errorf("no single \"preallocation unsupported\" debug event; logged: %v", logs.All())
		}
	})
}

// TestBeneathRoot: with Destination.Beneath the rescue root is a path in a
// holder's own view, every component of which the holder may have planted
// (a container's root, reached through /proc/PID/root): each is opened
// beneath Via without following a symlink, the root's parents too, so an
// absolute symlink (which through /proc/PID/root/… would resolve against
// the daemon's root) or a relative one climbing out cannot lead the write
// outside; a plain tree works, and its missing levels are created 0700.
func TestBeneathRoot(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 16)
	src := filepath.Join(mnt, "held")
	writeFile(t, src, []byte("held by a container"))
	_, c := holdDeleted(t, src, "r")
	tests := []struct {
		name  string
		root  string
		plant func(t *testing.T, via, outside string)
	}{
		{"root is an absolute symlink", "/.relinkd", func(t *testing.T, via, outside string) {
			must(t, os.Symlink(outside, filepath.Join(via, ".relinkd")))
		}},
		{"parent is an absolute symlink", "/data/.relinkd", func(t *testing.T, via, outside string) {
			must(t, os.Symlink(outside, filepath.Join(via, "data")))
		}},
		{"grandparent is a relative symlink climbing out", "/var/log/.relinkd", func(t *testing.T, via, outside string) {
			rel, err := filepath.Rel(via, outside)
			must(t, err)
			must(t, os.Symlink(rel, filepath.Join(via, "var")))
		}},
		{"parent is a file", "/data/.relinkd", func(t *testing.T, via, outside string) {
			must(t, os.WriteFile(filepath.Join(via, "data"), nil, 0o644))
		}},
	}
	eachWalk(t, func(t *testing.T, w walker) {
		e := newEngine(t, Options{})
		e.walk = w
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				via, outside := filepath.Join(t.TempDir(), "root"), t.TempDir()
				must(t, os.Mkdir(via, 0o755))
				tt.plant(t, via, outside)
				_, err := e.Rescue(ctx(t), pin(t, e, c), Destination{Root: tt.root, Via: via, Beneath: true, Rel: "var/log/app.log"})
				if !errors.Is(err, ErrUnsafePath) && !errors.Is(err, unix.ENOTDIR) {
					t.Fatalf("want ErrUnsafePath, got %v", err)
				}
				t.Log(err)
				if ents, _ := os.ReadDir(outside); len(ents) != 0 {
					t.Errorf("created outside the holder's root: %v", ents)
				}
			})
		}
		t.Run("plain tree", func(t *testing.T) {
			via := filepath.Join(t.TempDir(), "root")
			must(t, os.MkdirAll(filepath.Join(via, "srv"), 0o755))
			res, err := resultOf(e.Rescue(ctx(t), pin(t, e, c), Destination{Root: "/srv/data/.relinkd", Via: via, Beneath: true, Rel: "var/log/app.log"}))
			if err != nil || res.Path != "/srv/data/.relinkd/var/log/app.log" {
				t.Fatalf("rescued to %q, %v; want /srv/data/.relinkd/var/log/app.log in the holder's view", res.Path, err)
			}
			if b, err := os.ReadFile(filepath.Join(via, res.Path)); err != nil || string(b) != "held by a container" {
				t.Errorf("content %q %v", b, err)
			}
			if fi, err := os.Stat(filepath.Join(via, "srv/data")); err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("created level: %v %v, want 0700", fi, err)
			}
		})
		// Via names the holder by pid: once the holder is gone the pid
		// may be another process's, whose root is not to be written.
		t.Run("holder gone", func(t *testing.T) {
			src := filepath.Join(mnt, "gone-"+strings.ReplaceAll(w.String(), " ", "_"))
			writeFile(t, src, []byte("x"))
			h, c := holdDeleted(t, src, "r")
			p := pin(t, e, c)
			h.Kill()
			via := filepath.Join(t.TempDir(), "root")
			must(t, os.Mkdir(via, 0o755))
			if _, err := e.Rescue(ctx(t), p, Destination{Root: "/.relinkd", Via: via, Beneath: true, Rel: "x"}); !errors.Is(err, ErrVanished) {
				t.Errorf("want ErrVanished, got %v", err)
			}
		})
	})
}
