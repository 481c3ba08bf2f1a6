package relink

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/layout"
)

// maxLeaf leaves room in a 255-byte name for a collision suffix (".999")
// and the sidecar's ".relinkd.json".
const maxLeaf = layout.MaxLeaf

// destDir is an open directory below the rescue root.
type destDir struct {
	fd   int
	path string // for messages and Result.Path only; never opened
}

// splitRel cleans a relative destination path lexically into directory
// components and a leaf name. The path comes from the holder's view of a
// deleted name, which an unprivileged user chooses: "..", "." and empty
// components are dropped, over-long names are cut, and an empty leaf
// becomes "unnamed". openat2 enforces the same confinement again.
func splitRel(rel string) (dirs []string, leaf string) {
	var comps []string
	for _, c := range strings.Split(path.Clean("/"+rel), "/") {
		if c != "" && c != "." && c != ".." {
			comps = append(comps, c)
		}
	}
	if len(comps) == 0 {
		return nil, "unnamed"
	}
	dirs, leaf = comps[:len(comps)-1], comps[len(comps)-1]
	for i, d := range dirs {
		if len(d) > 255 {
			dirs[i] = d[:255]
		}
	}
	if len(leaf) > maxLeaf {
		leaf = leaf[:maxLeaf]
	}
	return dirs, leaf
}

// walker resolves paths below a rescue root one component at a time,
// never following a symlink and never leaving the directory it starts
// from. It uses openat2(2) where the kernel and the seccomp filter allow
// it, else openat(O_NOFOLLOW|O_DIRECTORY) with an fstat of each level:
// the same guarantees for single components, which is all it is given.
type walker struct {
	openat2 bool
}

// openat2Usable probes openat2 once per process: a seccomp filter can be
// added but never removed, and every thread shares it (TSYNC), so the
// answer does not change while relinkd runs (no new filter is installed).
var openat2Usable = sync.OnceValue(func() bool { return ProbeOpenat2() == nil })

// newWalker returns the walker for this process.
func newWalker() walker { return walker{openat2: openat2Usable()} }

// String names the resolution in use, for the start-up event and doctor.
func (w walker) String() string {
	if w.openat2 {
		return "openat2"
	}
	return "component walk"
}

// beneath opens the directory name, a single path component, below dirfd.
func (w walker) beneath(dirfd int, name string) (int, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return -1, fmt.Errorf("%w: %q is not a single path component", ErrUnsafePath, name)
	}
	if w.openat2 {
		return openat2Beneath(dirfd, name)
	}
	fd, err := openatNoFollow(dirfd, name)
	if err != nil {
		return -1, err
	}
	// O_DIRECTORY already refused anything else; the fstat makes the
	// check explicit and costs one call per level.
	st, err := fstat(fd)
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		unix.Close(fd)
		return -1, unix.ENOTDIR
	}
	return fd, nil
}

// openRoot opens (creating 0700 if absent) the rescue root d.Root, reached
// through d.Via. Its parent is trusted configuration and resolved
// normally; the root itself is created with mkdirat and opened without
// following a symlink, so that one planted in its place (say in a
// world-writable mount root) is refused, and it must be a directory owned
// by us that nobody else can write into.
//
// With d.Beneath every component of the root, parents too, is opened that
// way, beneath the directory d.Via leads to (see walkRoot).
func (w walker) openRoot(d Destination) (destDir, error) {
	root := d.Root
	if !filepath.IsAbs(root) || d.Via != "" && !filepath.IsAbs(d.Via) || d.Beneath && d.Via == "" {
		return destDir{}, fmt.Errorf("%w: rescue root %q (via %q) is not absolute", ErrUnsafePath, root, d.Via)
	}
	root = filepath.Clean(root)
	parent, base := filepath.Dir(root), filepath.Base(root)
	var fd int
	if d.Beneath {
		var err error
		if fd, err = w.walkRoot(d.Via, root); err != nil {
			return destDir{}, fmt.Errorf("rescue root %s (beneath %s): %w", root, d.Via, err)
		}
	} else if root == "/" {
		var err error
		if fd, err = openDir(d.Via + root); err != nil {
			return destDir{}, fmt.Errorf("open rescue root %s: %w", root, err)
		}
	} else {
		if err := os.MkdirAll(d.Via+parent, 0o700); err != nil {
			return destDir{}, spaceErr(fmt.Errorf("create parent of rescue root %s: %w", root, err))
		}
		pfd, err := openDir(d.Via + parent)
		if err != nil {
			return destDir{}, fmt.Errorf("open parent of rescue root %s: %w", parent, err)
		}
		defer unix.Close(pfd)
		if fd, err = w.mkdirOpen(pfd, base); err != nil {
			return destDir{}, fmt.Errorf("rescue root %s: %w", root, err)
		}
	}
	st, err := fstat(fd)
	if err != nil {
		unix.Close(fd)
		return destDir{}, fmt.Errorf("fstat rescue root %s: %w", root, err)
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		unix.Close(fd)
		return destDir{}, fmt.Errorf("%w: rescue root %s is owned by uid %d with mode %#o (want owner %d, not group- or world-writable)",
			ErrUnsafePath, root, st.Uid, st.Mode&0o7777, os.Geteuid())
	}
	return destDir{fd: fd, path: root}, nil
}

// walkRoot opens root, a path in the view of the process whose root
// directory via leads to (/proc/PID/root: the magic link is the one jump,
// into that process's root), one component at a time beneath it with
// mkdirOpen: no symlink is followed and no ".." taken, so a directory the
// process planted or swapped cannot lead outside its root, as an absolute
// symlink reached through /proc/PID/root/… would (it resolves against the
// caller's root, proc(5)). A missing component is created 0700.
func (w walker) walkRoot(via, root string) (int, error) {
	fd, err := openDir(via)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", via, err)
	}
	for _, name := range strings.Split(root, "/") {
		if name == "" {
			continue
		}
		next, err := w.mkdirOpen(fd, name)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// mkdirOpen opens the directory name in dirfd, creating it 0700 first if
// it does not exist, without following any symlink.
func (w walker) mkdirOpen(dirfd int, name string) (int, error) {
	return w.openSub(dirfd, name, true, 0o700)
}

// openSub opens the directory name in dirfd without following any
// symlink, creating it with mode (less the umask) first if it does not
// exist and create is set; a missing one is ENOENT otherwise.
func (w walker) openSub(dirfd int, name string, create bool, mode uint32) (int, error) {
	fd, err := w.beneath(dirfd, name)
	if create && errors.Is(err, unix.ENOENT) {
		if err := eintr.Retry0(func() error { return unix.Mkdirat(dirfd, name, mode) }); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, spaceErr(fmt.Errorf("mkdir %q: %w", name, err))
		}
		fd, err = w.beneath(dirfd, name)
	}
	var st unix.Stat_t
	switch {
	case err == nil:
	case errors.Is(err, ErrUnsafePath):
		return -1, err
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV),
		errors.Is(err, unix.ENOTDIR) && unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK:
		// With O_NOFOLLOW|O_DIRECTORY a symlink answers ELOOP or
		// ENOTDIR; RESOLVE_NO_SYMLINKS answers ELOOP, RESOLVE_BENEATH EXDEV.
		return -1, fmt.Errorf("%w: %q is a symlink (refused, nothing written): %w", ErrUnsafePath, name, err)
	case errors.Is(err, unix.ENOTDIR):
		return -1, fmt.Errorf("%w: %q is not a directory: %w", ErrUnsafePath, name, err)
	case err != nil:
		return -1, fmt.Errorf("open %q: %w", name, err)
	}
	return fd, nil
}

// openDest opens the directory where d's file goes and returns it with the
// leaf name. Every level is created 0700 and opened beneath the previous
// one, so nothing can redirect the walk outside the root.
func (w walker) openDest(d Destination) (destDir, string, error) {
	dirs, leaf := splitRel(d.Rel)
	cur, err := w.openRoot(d)
	if err != nil {
		return destDir{}, "", err
	}
	for _, name := range dirs {
		fd, err := w.mkdirOpen(cur.fd, name)
		unix.Close(cur.fd)
		if err != nil {
			return destDir{}, "", fmt.Errorf("under %s: %w", cur.path, err)
		}
		cur = destDir{fd: fd, path: cur.path + "/" + name}
	}
	// Refuse a planted leaf before spending a copy on it; linkUnique
	// checks again at publish time.
	var st unix.Stat_t
	if unix.Fstatat(cur.fd, leaf, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		unix.Close(cur.fd)
		return destDir{}, "", fmt.Errorf("%w: %s/%s is a symlink (refused, nothing written)", ErrUnsafePath, cur.path, leaf)
	}
	return cur, leaf, nil
}

// linkUnique gives something a name in dir with link, which must fail with
// EEXIST rather than replace: first leaf, then leaf.1, leaf.2 … A symlink
// found at any of these names is refused: only the engine writes under
// the rescue root, so one there was planted.
func linkUnique(dir destDir, leaf string, link func(name string) error) (string, error) {
	for i := 0; i < 1000; i++ {
		name := leaf
		if i > 0 {
			name = leaf + "." + strconv.Itoa(i)
		}
		err := link(name)
		if err == nil {
			return name, nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return "", err
		}
		var st unix.Stat_t
		if unix.Fstatat(dir.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return "", fmt.Errorf("%w: %s/%s is a symlink (refused, nothing written)", ErrUnsafePath, dir.path, name)
		}
	}
	return "", fmt.Errorf("no free name for %s/%s after 1000 tries: %w", dir.path, leaf, unix.EEXIST)
}

// tmpFile is a new file being written before it is published: unnamed
// (O_TMPFILE), or under a hidden temporary name where the filesystem has
// no O_TMPFILE.
type tmpFile struct {
	f    *os.File
	dir  destDir
	name string // hidden name; "" for O_TMPFILE
}

// createTemp creates the file that will be published in dir.
func (e *Engine) createTemp(dir destDir, leaf string) (*tmpFile, error) {
	if !e.noTmpfile {
		fd, err := openTmpfile(dir.fd)
		if err == nil {
			return &tmpFile{f: os.NewFile(uintptr(fd), dir.path+"/(tmpfile)"), dir: dir}, nil
		}
		// Filesystems without O_TMPFILE answer EOPNOTSUPP (open(2));
		// kernels that predate it, EISDIR.
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
			return nil, spaceErr(fmt.Errorf("create O_TMPFILE in %s: %w", dir.path, err))
		}
	}
	var rnd [layout.TempRandBytes]byte
	for i := 0; i < 100; i++ {
		_, _ = rand.Read(rnd[:])
		name := "." + leaf + layout.TempMarker + hex.EncodeToString(rnd[:])
		if len(name) > 255 {
			name = layout.TempMarker + hex.EncodeToString(rnd[:])
		}
		fd, err := createExcl(dir.fd, name)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return nil, spaceErr(fmt.Errorf("create temp %s/%s: %w", dir.path, name, err))
		}
		return &tmpFile{f: os.NewFile(uintptr(fd), dir.path+"/"+name), dir: dir, name: name}, nil
	}
	return nil, fmt.Errorf("create temp in %s: %w", dir.path, unix.EEXIST)
}

func (t *tmpFile) fd() int { return int(t.f.Fd()) }

// discard closes and removes the temp file. An O_TMPFILE file disappears
// with its last descriptor by construction; a hidden temp is unlinked.
func (t *tmpFile) discard() {
	t.f.Close()
	if t.name != "" {
		_ = unix.Unlinkat(t.dir.fd, t.name, 0)
	}
}

// namer chooses the name under which a new inode is published in a
// directory: place gives it one by calling link, which never replaces
// anything, and returns the name given.
type namer struct {
	leaf  string // the name wanted, also the base of a hidden temporary name
	place func(dir destDir, link func(name string) error) (string, error)
}

// uniqueName publishes under leaf, else leaf.1, leaf.2 … (linkUnique).
func uniqueName(leaf string) namer {
	return namer{leaf: leaf, place: func(dir destDir, link func(string) error) (string, error) {
		return linkUnique(dir, leaf, link)
	}}
}

// exactName publishes under leaf only; EEXIST if it is taken.
func exactName(leaf string) namer {
	return namer{leaf: leaf, place: func(_ destDir, link func(string) error) (string, error) {
		return leaf, link(leaf)
	}}
}

// publish fsyncs the file, gives it a unique name built from leaf, without
// replacing anything, and fsyncs the directory. With unique false the name
// is leaf only. The file stays open (the caller owns t.f). On error the
// temp is removed and nothing is visible.
func (e *Engine) publish(t *tmpFile, leaf string, unique bool) (string, error) {
	if unique {
		return e.publishAs(t, uniqueName(leaf))
	}
	return e.publishAs(t, exactName(leaf))
}

// publishAs is publish under the name nm chooses.
func (e *Engine) publishAs(t *tmpFile, nm namer) (string, error) {
	leaf := nm.leaf
	if err := eintr.Retry0(func() error { return unix.Fsync(t.fd()) }); err != nil {
		t.discard()
		return "", spaceErr(fmt.Errorf("fsync %s: %w", t.f.Name(), err))
	}
	link := func(name string) error {
		if t.name == "" {
			return linkFD(e.procRoot, t.fd(), t.dir.fd, name)
		}
		err := renameNoReplace(t.dir.fd, t.name, name)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
			// No RENAME_NOREPLACE here: link(2) never replaces either.
			if err = eintr.Retry0(func() error { return unix.Linkat(t.dir.fd, t.name, t.dir.fd, name, 0) }); err == nil {
				_ = unix.Unlinkat(t.dir.fd, t.name, 0)
			}
		}
		return err
	}
	name, err := nm.place(t.dir, link)
	if err != nil {
		t.discard()
		return "", spaceErr(fmt.Errorf("publish %s/%s: %w", t.dir.path, leaf, err))
	}
	t.name = "" // published: nothing left to clean up
	if err := eintr.Retry0(func() error { return unix.Fsync(t.dir.fd) }); err != nil {
		// Not durable: take the name back rather than report a rescue
		// that a crash could lose.
		_ = unix.Unlinkat(t.dir.fd, name, 0)
		t.f.Close()
		return "", spaceErr(fmt.Errorf("fsync directory %s: %w", t.dir.path, err))
	}
	return name, nil
}

// spaceErr marks ENOSPC and EDQUOT as ErrNoSpace.
func spaceErr(err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}
