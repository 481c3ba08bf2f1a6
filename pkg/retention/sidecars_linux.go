package retention

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/layout"
)

// SidecarFile is a sidecar found under a rescue root, with the rescued
// file it sits beside. Nothing in it is checked against the engine's
// format yet (relink.ParseSidecar and Sidecar.Describes do that).
type SidecarFile struct {
	Root string // the rescue root, a host path
	Rel  string // the rescued file's path below Root
	Data []byte // the sidecar's content, at most layout.MaxSidecarSize bytes
	// The rescued file, as statx(2) saw it (not following a symlink):
	// BirthTime in ns since the epoch, 0 where the filesystem has none.
	Dev, Ino  uint64
	Size      int64
	BirthTime int64
	// Err says why Data is empty: the sidecar is too large or unreadable,
	// or no regular file of the rescued name is beside it.
	Err error
}

// ErrSidecarFile is wrapped by SidecarFile.Err.
var ErrSidecarFile = errors.New("sidecar not readable")

// Sidecars calls fn for every sidecar under root (a host path, reached
// through the prefix via: see mounts.Host.Via) whose name is one the
// engine writes (layout.IsSidecar), with the walk that retention uses: the root opened with O_NOFOLLOW, each level below it
// with openat(O_NOFOLLOW|O_DIRECTORY), so that no symlink is followed and
// nothing outside root is read. A sidecar is opened O_NOFOLLOW|O_NONBLOCK
// beneath its directory, must be a regular file and is read up to
// layout.MaxSidecarSize. A root that does not exist gives no call and no
// error.
func Sidecars(via, root string, fn func(SidecarFile)) error {
	type found struct {
		dirfd int
		name  string
		rel   string
	}
	var sidecars []found
	have := make(map[string]bool) // rescued files, by rel
	t, err := walkRoot(via+root, func(f rescued) {
		switch f.kind {
		case sidecar:
			sidecars = append(sidecars, found{f.dirfd, f.name, f.rel})
		case rescuedFile:
			have[f.rel] = true
		}
	})
	defer t.close()
	if err != nil {
		if errors.Is(err, errNotExist) {
			return nil
		}
		return err
	}
	for _, s := range sidecars {
		sf := SidecarFile{Root: root, Rel: strings.TrimSuffix(s.rel, layout.SidecarSuffix)}
		name := strings.TrimSuffix(s.name, layout.SidecarSuffix)
		var st unix.Statx_t
		switch err := eintr.Retry0(func() error {
			return unix.Statx(s.dirfd, name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_SYNC_AS_STAT,
				unix.STATX_TYPE|unix.STATX_INO|unix.STATX_SIZE|unix.STATX_BTIME, &st)
		}); {
		case !have[sf.Rel]:
			sf.Err = fmt.Errorf("%w: %s/%s: no rescued file beside it", ErrSidecarFile, root, s.rel)
		case err != nil:
			sf.Err = fmt.Errorf("%w: %s/%s: %w", ErrSidecarFile, root, sf.Rel, err)
		case st.Mode&unix.S_IFMT != unix.S_IFREG:
			sf.Err = fmt.Errorf("%w: %s/%s is not a regular file", ErrSidecarFile, root, sf.Rel)
		default:
			sf.Dev, sf.Ino, sf.Size = unix.Mkdev(st.Dev_major, st.Dev_minor), st.Ino, int64(st.Size)
			if st.Mask&unix.STATX_BTIME != 0 {
				sf.BirthTime = st.Btime.Sec*1_000_000_000 + int64(st.Btime.Nsec)
			}
			if sf.Data, err = readSmall(s.dirfd, s.name, layout.MaxSidecarSize); err != nil {
				sf.Err = fmt.Errorf("%w: %s/%s: %w", ErrSidecarFile, root, s.rel, err)
			}
		}
		fn(sf)
	}
	return nil
}

// readSmall reads the regular file name in dirfd, refusing a symlink, a
// file of another type and one larger than limit.
func readSmall(dirfd int, name string, limit int) ([]byte, error) {
	fd, err := eintr.Retry(func() (int, error) {
		return unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	})
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("not a regular file (mode %#o)", st.Mode)
	}
	if st.Size > int64(limit) {
		return nil, fmt.Errorf("%d bytes, more than %d", st.Size, limit)
	}
	// One byte more than its size tells a file that grew meanwhile.
	b := make([]byte, st.Size+1)
	n := 0
	for n < len(b) {
		k, err := eintr.Retry(func() (int, error) { return unix.Read(fd, b[n:]) })
		if err != nil {
			return nil, err
		}
		if k == 0 {
			break
		}
		n += k
	}
	if n == len(b) {
		return nil, fmt.Errorf("grew while it was read (%d bytes at the start)", st.Size)
	}
	return b[:n], nil
}
