package relink

// Reading sidecars back for `relinkd list` and `restore`. ParseSidecar and
// Sidecar.Describes serve a restarted daemon, which adopts only sidecars
// that record the rescued file's inode; a listing must also describe the
// sidecars written before that, and check what ParseSidecar does not (the
// shape of the names, rescued_to). ReadSidecar and Verify do that, leaving
// the identity checks of a sidecar that has them to Describes.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/relinkd/relinkd/internal/layout"
	"github.com/relinkd/relinkd/internal/logging"
)

// hasIdentity reports whether s records the rescued file's own inode, as
// sidecars have since relinkd became restart-safe; older ones do not.
func (s *Sidecar) hasIdentity() bool { return s.RescuedIno != 0 }

// OriginalPath returns the holder's name for the file, exactly (from
// path_base64 when the name is not UTF-8).
func (s *Sidecar) OriginalPath() []byte {
	if b, err := logging.NameBytes(s.Path, s.PathBase64); err == nil {
		return b
	}
	return []byte(s.Path)
}

// RescuedPath returns where the sidecar says the data is, exactly.
func (s *Sidecar) RescuedPath() []byte {
	if b, err := logging.NameBytes(s.RescuedTo, s.RescuedToBase64); err == nil {
		return b
	}
	return []byte(s.RescuedTo)
}

// ReadSidecar decodes a sidecar and checks that it has the shape of the
// engine's: at most layout.MaxSidecarSize bytes of one JSON object with an absolute original
// path, an absolute rescued_to, a known method, a non-negative size, the
// source's inode and a time; base64 names that decode. Fields it does not
// know are ignored (a later engine may add some). Unlike ParseSidecar it
// takes sidecars written before relinkd recorded the rescued file's inode.
func ReadSidecar(b []byte) (Sidecar, error) {
	var s Sidecar
	if len(b) > layout.MaxSidecarSize {
		return s, fmt.Errorf("%w: %d bytes, more than %d", ErrSidecar, len(b), layout.MaxSidecarSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&s); err != nil {
		return Sidecar{}, fmt.Errorf("%w: %w", ErrSidecar, err)
	}
	if dec.More() {
		return Sidecar{}, fmt.Errorf("%w: more than one JSON value", ErrSidecar)
	}
	for _, b64 := range []string{s.PathBase64, s.RescuedToBase64} {
		if _, err := base64.StdEncoding.DecodeString(b64); err != nil {
			return Sidecar{}, fmt.Errorf("%w: base64 name: %w", ErrSidecar, err)
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
		return Sidecar{}, fmt.Errorf("%w: %s", ErrSidecar, why)
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
// must name that very file (for a holder in another mount namespace, maybe
// as its own view names it). A sidecar that records the rescued file's
// inode is then checked by Describes (the inode and birth time it
// records; the size, or more while a follow is in progress). An older one
// is checked as far as it can be: a link must be the source's inode, a
// copy or reflink the size it gives, or more while it is being followed
// (see FollowState). A link is the live source and may have any size.
func (s *Sidecar) Verify(f Found) error {
	// A holder's file rescued inside its container (rescue.containers:
	// inside) is named in the container's view, which the host reaches
	// below the container's root.
	if got := string(s.RescuedPath()); got != f.Path && !(s.MntNS != 0 && strings.HasSuffix(f.Path, got)) {
		return fmt.Errorf("%w: rescued_to names %q, not this file", ErrSidecar, got)
	}
	if s.hasIdentity() {
		return s.Describes(f.Dev, f.Ino, f.Size, f.BirthTime)
	}
	if s.Method == MethodLink {
		if f.Dev != s.Dev || f.Ino != s.Ino {
			return fmt.Errorf("%w: a link of dev %d ino %d, but the file is dev %d ino %d", ErrSidecar, s.Dev, s.Ino, f.Dev, f.Ino)
		}
		return nil
	}
	switch {
	case f.Size == s.Bytes:
	case f.Size > s.Bytes && s.FollowState(f) == FollowActive:
	default:
		return fmt.Errorf("%w: the file has %d bytes, the sidecar says %d (%s)", ErrSidecar, f.Size, s.Bytes, s.followNote(f))
	}
	return nil
}

// Follow states of a rescued file.
const (
	FollowNone     = ""          // not followed, or a follow that stopped early
	FollowActive   = "following" // a follow still appends (or was interrupted by a crash and will be resumed)
	FollowFinished = "followed"  // followed until the last writer closed the file
)

// FollowState says how s's file f is followed. A sidecar that records the
// rescued file's inode says so itself (Followed, Following). An older one
// cannot: its copy is taken to be still followed when it has grown since
// the sidecar was written, which only a follow's appends do (they set the
// mtime; a follow that ends sets the source's times back and rewrites the
// sidecar with the final size), unless another name shares its inode (it
// was restored by link: what grew it may be whoever uses that name).
func (s *Sidecar) FollowState(f Found) string {
	switch {
	case s.Followed:
		return FollowFinished
	case s.Following:
		return FollowActive
	case !s.hasIdentity() && s.Method != MethodLink && f.Size > s.Bytes && f.Mtime.After(f.SidecarMtime) && f.Nlink <= 1:
		return FollowActive
	}
	return FollowNone
}

func (s *Sidecar) followNote(f Found) string {
	switch {
	case s.Followed:
		return "its follow had finished"
	case f.Size > s.Bytes:
		return "not followed since the sidecar was written"
	}
	return "not being followed"
}
