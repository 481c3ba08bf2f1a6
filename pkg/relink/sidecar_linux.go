package relink

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/layout"
	"github.com/relinkd/relinkd/internal/logging"
)

const sidecarSuffix = layout.SidecarSuffix

// Sidecar is the content of NAME.relinkd.json: the fields of the
// "file rescued" log event (DESIGN.md), plus identity and hash.
type Sidecar struct {
	Path      string `json:"path"`       // the holder's name for the file
	RescuedTo string `json:"rescued_to"` // where the data is now
	// The exact bytes of a name that is not valid UTF-8 (where JSON
	// shows U+FFFD), as in the log events.
	PathBase64      string    `json:"path_base64,omitempty"`
	RescuedToBase64 string    `json:"rescued_to_base64,omitempty"`
	Method          Method    `json:"method"`
	Bytes           int64     `json:"bytes"`
	PID             int       `json:"pid"`
	FD              int       `json:"fd"`
	Comm            string    `json:"comm"`
	UID             uint32    `json:"uid"`
	Rule            *string   `json:"rule"` // null when no rule chose the file
	Duration        string    `json:"duration"`
	Dev             uint64    `json:"dev"`
	Ino             uint64    `json:"ino"`
	SHA256          string    `json:"sha256,omitempty"`
	Followed        bool      `json:"followed,omitempty"`
	Time            time.Time `json:"ts"`
	// BirthTime is the source's birth time (statx(2) STATX_BTIME) in ns
	// since the epoch, 0 where its filesystem records none. Inode numbers
	// are reused once a file is freed: with Dev and Ino it tells the file
	// that was rescued from a later one that got its number.
	BirthTime int64 `json:"btime,omitempty"`
	// RescuedDev, RescuedIno and RescuedBirthTime are the rescued file's
	// own inode (for a link, the source's) and birth time, so that a
	// reader can check the sidecar against the file beside it before
	// believing it, even if that was replaced by a file that got the
	// same inode number.
	RescuedDev       uint64 `json:"rescued_dev,omitempty"`
	RescuedIno       uint64 `json:"rescued_ino,omitempty"`
	RescuedBirthTime int64  `json:"rescued_btime,omitempty"`
	// Following is set while a follow appends to the rescued file. The
	// follow clears it when it ends (the last writer closed the file, or a
	// truncation) and leaves it set when it is interrupted (shutdown, a
	// crash, a kill), so that the next daemon resumes it.
	Following bool `json:"following,omitempty"`

	// The holder's mount namespace and container when it was not the
	// host's, as in the events (scanner.Candidate.ContainerField).
	MntNS       uint64 `json:"mntns,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
}

// ErrSidecar: a sidecar does not parse, or does not describe the file
// beside it. Such a sidecar is never trusted.
var ErrSidecar = errors.New("sidecar does not describe its file")

// ParseSidecar decodes a sidecar written by the engine. It refuses one
// larger than layout.MaxSidecarSize or without the identities that
// Describes needs (sidecars written before relinkd recorded them).
func ParseSidecar(b []byte) (Sidecar, error) {
	var s Sidecar
	if len(b) > layout.MaxSidecarSize {
		return s, fmt.Errorf("%w: %d bytes, more than %d", ErrSidecar, len(b), layout.MaxSidecarSize)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return Sidecar{}, fmt.Errorf("%w: %w", ErrSidecar, err)
	}
	if _, err := ParseMethod(string(s.Method)); err != nil {
		return Sidecar{}, fmt.Errorf("%w: %w", ErrSidecar, err)
	}
	if s.Ino == 0 || s.RescuedIno == 0 {
		return Sidecar{}, fmt.Errorf("%w: no source or rescued inode recorded", ErrSidecar)
	}
	return s, nil
}

// Describes checks s against the rescued file found beside it (statx(2):
// dev, ino, size, birth time or 0). The file must be the inode s names,
// born when s says: for a link, the source's inode itself. A copy or a
// reflink never changes once published but while a follow appends to it,
// so its size must be s.Bytes, or at least that while s says a follow was
// in progress (the follow may have appended more before it was
// interrupted). A link is the live source, so its size says nothing.
func (s *Sidecar) Describes(dev, ino uint64, size, btime int64) error {
	if dev != s.RescuedDev || ino != s.RescuedIno {
		return fmt.Errorf("%w: the file is dev %d ino %d, the sidecar names dev %d ino %d", ErrSidecar, dev, ino, s.RescuedDev, s.RescuedIno)
	}
	if btime != s.RescuedBirthTime {
		return fmt.Errorf("%w: the file was born %d, the sidecar's %d", ErrSidecar, btime, s.RescuedBirthTime)
	}
	switch {
	case s.Method == MethodLink:
		if dev != s.Dev || ino != s.Ino {
			return fmt.Errorf("%w: a link of dev %d ino %d is dev %d ino %d", ErrSidecar, s.Dev, s.Ino, dev, ino)
		}
	case size < s.Bytes || size > s.Bytes && !s.Following:
		return fmt.Errorf("%w: the file has %d bytes, the sidecar %d (following %v)", ErrSidecar, size, s.Bytes, s.Following)
	}
	return nil
}

func sidecarOf(rs *Rescued, d Destination, r Result, following bool) Sidecar {
	c := rs.pin.c
	s := Sidecar{
		Path: string(c.Path), RescuedTo: r.Path, Method: r.Method, Bytes: r.Bytes,
		PID: c.PID, FD: c.FD, Comm: c.Comm, UID: c.UID, Duration: r.Duration.String(),
		Dev: c.Dev, Ino: c.Ino, SHA256: r.SHA256, Followed: r.Followed, Time: time.Now().UTC(),
		Following: following,
		MntNS:     c.MntNS, ContainerID: c.ContainerID,
	}
	_, s.PathBase64 = logging.Name(c.Path)
	_, s.RescuedToBase64 = logging.Name([]byte(r.Path))
	if d.Rule != "" {
		rule := d.Rule
		s.Rule = &rule
	}
	if o := rs.orig; o != nil {
		// An adopted rescue (Adopt): it is still the first holder's file,
		// rescued then; only what the follow changes is new.
		s.Path, s.PathBase64, s.PID, s.FD, s.Comm, s.UID = o.Path, o.PathBase64, o.PID, o.FD, o.Comm, o.UID
		s.Rule, s.Duration = o.Rule, o.Duration
	}
	return s
}

// writeSidecar writes NAME.relinkd.json beside the rescued file, mode 0600.
// The first write never replaces anything; replace is for Follow's updates
// of our own sidecar. Both are atomic: a reader sees the old or the new
// file, never a partial one. following is the sidecar's Following.
func (e *Engine) writeSidecar(rs *Rescued, d Destination, r Result, replace, following bool) (string, error) {
	p := rs.pin
	rs.mu.Lock()
	dir, dst := rs.dir, rs.dst
	rs.mu.Unlock()
	if dir.fd < 0 {
		return "", fmt.Errorf("sidecar for %s: destination directory not open", r.Path)
	}
	s := sidecarOf(rs, d, r, following)
	// The identities a restarted daemon checks before it believes the
	// sidecar: the source's birth time and the rescued file's inode.
	var err error
	if s.BirthTime, err = birthTime(p.fd); err != nil {
		return "", fmt.Errorf("sidecar for %s: birth time of the source: %w", r.Path, err)
	}
	rfd := p.fd // link: the rescued name is the source's inode
	if dst != nil {
		rfd = int(dst.Fd())
	}
	st, err := fstat(rfd)
	if err != nil {
		return "", fmt.Errorf("sidecar for %s: fstat the rescued file: %w", r.Path, err)
	}
	s.RescuedDev, s.RescuedIno = uint64(st.Dev), st.Ino
	if s.RescuedBirthTime, err = birthTime(rfd); err != nil {
		return "", fmt.Errorf("sidecar for %s: birth time of the rescued file: %w", r.Path, err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return "", err
	}
	b = append(b, '\n')
	name := filepath.Base(r.Path) + sidecarSuffix
	if !replace {
		t, err := e.createTemp(dir, name)
		if err != nil {
			return "", err
		}
		if _, err := t.f.Write(b); err != nil {
			t.discard()
			return "", spaceErr(fmt.Errorf("write sidecar: %w", err))
		}
		if _, err := e.publish(t, name, false); err != nil {
			return "", err
		}
		t.f.Close()
		return dir.path + "/" + name, nil
	}
	var rnd [layout.TempRandBytes]byte
	_, _ = rand.Read(rnd[:])
	tmp := layout.TempMarker + hex.EncodeToString(rnd[:])
	fd, err := createExcl(dir.fd, tmp)
	if err != nil {
		return "", spaceErr(fmt.Errorf("create %s/%s: %w", dir.path, tmp, err))
	}
	cleanup := func(err error) (string, error) {
		unix.Close(fd)
		_ = unix.Unlinkat(dir.fd, tmp, 0)
		return "", spaceErr(err)
	}
	for w := 0; w < len(b); {
		n, err := eintr.Retry(func() (int, error) { return unix.Write(fd, b[w:]) })
		if err != nil {
			return cleanup(fmt.Errorf("write sidecar: %w", err))
		}
		w += n
	}
	if err := eintr.Retry0(func() error { return unix.Fsync(fd) }); err != nil {
		return cleanup(fmt.Errorf("fsync sidecar: %w", err))
	}
	if err := eintr.Retry0(func() error { return unix.Renameat(dir.fd, tmp, dir.fd, name) }); err != nil {
		return cleanup(fmt.Errorf("rename sidecar into place: %w", err))
	}
	unix.Close(fd)
	if err := eintr.Retry0(func() error { return unix.Fsync(dir.fd) }); err != nil {
		return "", fmt.Errorf("fsync directory %s: %w", dir.path, err)
	}
	return dir.path + "/" + name, nil
}
