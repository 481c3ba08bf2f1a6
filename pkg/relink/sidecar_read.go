package relink

// Reading sidecars back. The restart-safety work has its own reader
// (ParseSidecar, Sidecar.Describes) for what a restarted daemon adopts;
// this one serves `relinkd list` and `restore`, which must also describe
// sidecars written before the identity fields existed, and is kept to
// this file so that the two are easy to reconcile.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"
)

// maxStoredSidecar bounds the sidecar ReadSidecar takes: the engine
// writes a few hundred bytes.
const maxStoredSidecar = 64 << 10

// ErrForgedSidecar: a sidecar does not parse as one of the engine's, or
// what it claims does not match the file beside it. Such a sidecar is
// never trusted: listed with why, and not restored from.
var ErrForgedSidecar = errors.New("sidecar does not describe the file beside it")

// StoredSidecar is a sidecar as read back from a rescue root: the fields
// the engine writes, and those later engines add, read when present so
// that older and newer sidecars both read (every one is optional).
type StoredSidecar struct {
	Sidecar
	// The rescued file's own inode (for a link, the source's) and birth
	// time (ns since the epoch), and the source's birth time.
	RescuedDev       uint64 `json:"rescued_dev,omitempty"`
	RescuedIno       uint64 `json:"rescued_ino,omitempty"`
	RescuedBirthTime int64  `json:"rescued_btime,omitempty"`
	BirthTime        int64  `json:"btime,omitempty"`
	// Following is set while a follow still appends to the rescued file;
	// nil when the sidecar predates the field.
	Following *bool `json:"following,omitempty"`
	// ContainerID names the holder's container, when it ran in one: then
	// Path is in the container's view, not the host's.
	ContainerID string `json:"container_id,omitempty"`
}

// OriginalPath returns the holder's name for the file, exactly (from
// path_base64 when the name is not UTF-8).
func (s *StoredSidecar) OriginalPath() []byte {
	if s.PathBase64 != "" {
		if b, err := base64.StdEncoding.DecodeString(s.PathBase64); err == nil {
			return b
		}
	}
	return []byte(s.Path)
}

// RescuedPath returns where the sidecar says the data is, exactly.
func (s *StoredSidecar) RescuedPath() []byte {
	if s.RescuedToBase64 != "" {
		if b, err := base64.StdEncoding.DecodeString(s.RescuedToBase64); err == nil {
			return b
		}
	}
	return []byte(s.RescuedTo)
}

// ReadSidecar decodes a sidecar and checks that it has the shape of the
// engine's: at most 64 KiB of one JSON object with an absolute original
// path, an absolute rescued_to, a known method, a non-negative size, the
// source's inode and a time; base64 names that decode. Fields it does not
// know are ignored (a later engine may add some).
func ReadSidecar(b []byte) (StoredSidecar, error) {
	var s StoredSidecar
	if len(b) > maxStoredSidecar {
		return s, fmt.Errorf("%w: %d bytes, more than %d", ErrForgedSidecar, len(b), maxStoredSidecar)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&s); err != nil {
		return StoredSidecar{}, fmt.Errorf("%w: %w", ErrForgedSidecar, err)
	}
	if dec.More() {
		return StoredSidecar{}, fmt.Errorf("%w: more than one JSON value", ErrForgedSidecar)
	}
	for _, b64 := range []string{s.PathBase64, s.RescuedToBase64} {
		if _, err := base64.StdEncoding.DecodeString(b64); err != nil {
			return StoredSidecar{}, fmt.Errorf("%w: base64 name: %w", ErrForgedSidecar, err)
		}
	}
	var why string
	switch _, merr := ParseMethod(string(s.Method)); {
	case merr != nil:
		why = merr.Error()
	case !filepath.IsAbs(string(s.OriginalPath())):
		why = fmt.Sprintf("path %q is not absolute", s.Path)
	case !filepath.IsAbs(string(s.RescuedPath())):
		why = fmt.Sprintf("rescued_to %q is not absolute", s.RescuedTo)
	case s.Bytes < 0:
		why = fmt.Sprintf("bytes %d", s.Bytes)
	case s.Ino == 0:
		why = "no inode recorded"
	case s.Time.IsZero():
		why = "no time recorded"
	}
	if why != "" {
		return StoredSidecar{}, fmt.Errorf("%w: %s", ErrForgedSidecar, why)
	}
	return s, nil
}

// Found is what lstat says of a rescued file and of its sidecar, for
// Verify and FollowState.
type Found struct {
	Path         string // the rescued file's host path (root/rel)
	Dev, Ino     uint64
	Nlink        uint32
	Size         int64
	BirthTime    int64 // ns since the epoch; 0 where the filesystem records none
	Mtime        time.Time
	SidecarMtime time.Time
}

// Verify checks s against the rescued file f found beside it. rescued_to
// must name that very file; where s records the rescued file's inode (and
// birth time), the file must be it; a link is the source's inode itself,
// so it must be the inode s records for the source. A copy or a reflink
// does not change once published, except while a follow appends to it:
// its size must be s.Bytes, or more while a follow is in progress (see
// FollowState). A link is the live source and may have any size.
func (s *StoredSidecar) Verify(f Found) error {
	if got := string(s.RescuedPath()); got != f.Path {
		return fmt.Errorf("%w: rescued_to names %q, not this file", ErrForgedSidecar, got)
	}
	if s.RescuedIno != 0 {
		if f.Dev != s.RescuedDev || f.Ino != s.RescuedIno {
			return fmt.Errorf("%w: the file is dev %d ino %d, the sidecar names dev %d ino %d", ErrForgedSidecar, f.Dev, f.Ino, s.RescuedDev, s.RescuedIno)
		}
		if s.RescuedBirthTime != 0 && f.BirthTime != 0 && f.BirthTime != s.RescuedBirthTime {
			return fmt.Errorf("%w: the file was born at %d, the sidecar's at %d", ErrForgedSidecar, f.BirthTime, s.RescuedBirthTime)
		}
	}
	if s.Method == MethodLink {
		if f.Dev != s.Dev || f.Ino != s.Ino {
			return fmt.Errorf("%w: a link of dev %d ino %d, but the file is dev %d ino %d", ErrForgedSidecar, s.Dev, s.Ino, f.Dev, f.Ino)
		}
		return nil
	}
	switch {
	case f.Size == s.Bytes:
	case f.Size > s.Bytes && s.FollowState(f) == FollowActive:
	default:
		return fmt.Errorf("%w: the file has %d bytes, the sidecar says %d (%s)", ErrForgedSidecar, f.Size, s.Bytes, s.followNote(f))
	}
	return nil
}

// Follow states of a rescued file.
const (
	FollowNone     = ""          // not followed, or a follow that stopped early
	FollowActive   = "following" // a follow still appends (or was interrupted by a crash and will be resumed)
	FollowFinished = "followed"  // followed until the last writer closed the file
)

// FollowState says how s's file f is followed. A sidecar says so itself
// (Followed, Following). One written before sidecars had Following cannot:
// its copy is taken to be still followed when it has grown since the
// sidecar was written, which only a follow's appends do (they set the
// mtime; a follow that ends sets the source's times back and rewrites the
// sidecar with the final size), unless another name shares its inode (it
// was restored by link: what grew it may be whoever uses that name).
func (s *StoredSidecar) FollowState(f Found) string {
	switch {
	case s.Followed:
		return FollowFinished
	case s.Following != nil:
		if *s.Following {
			return FollowActive
		}
	case s.Method != MethodLink && f.Size > s.Bytes && f.Mtime.After(f.SidecarMtime) && f.Nlink <= 1:
		return FollowActive
	}
	return FollowNone
}

func (s *StoredSidecar) followNote(f Found) string {
	switch {
	case s.Followed:
		return "its follow had finished"
	case s.Following != nil && *s.Following:
		return "following"
	case s.Following == nil && f.Size > s.Bytes:
		return "not followed since the sidecar was written"
	}
	return "not being followed"
}
