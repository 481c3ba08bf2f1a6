package relink

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/layout"
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

	// The holder's mount namespace and container when it was not the
	// host's, as in the events (scanner.Candidate.ContainerField).
	MntNS       uint64 `json:"mntns,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
}

func sidecarOf(p *Pin, d Destination, r Result) Sidecar {
	c := p.c
	s := Sidecar{
		Path: string(c.Path), RescuedTo: r.Path, Method: r.Method, Bytes: r.Bytes,
		PID: c.PID, FD: c.FD, Comm: c.Comm, UID: c.UID, Duration: r.Duration.String(),
		Dev: c.Dev, Ino: c.Ino, SHA256: r.SHA256, Followed: r.Followed, Time: time.Now().UTC(),
		MntNS: c.MntNS, ContainerID: c.ContainerID,
	}
	s.PathBase64, s.RescuedToBase64 = base64IfInvalid(c.Path), base64IfInvalid([]byte(r.Path))
	if d.Rule != "" {
		rule := d.Rule
		s.Rule = &rule
	}
	return s
}

// base64IfInvalid returns b in base64 when it is not valid UTF-8, else "".
func base64IfInvalid(b []byte) string {
	if utf8.Valid(b) {
		return ""
	}
	return base64.StdEncoding.EncodeToString(b)
}

// writeSidecar writes NAME.relinkd.json beside the rescued file, mode 0600.
// The first write never replaces anything; replace is for Follow's update
// of our own sidecar. Both are atomic: a reader sees the old or the new
// file, never a partial one.
func (e *Engine) writeSidecar(p *Pin, d Destination, r Result, replace bool) (string, error) {
	p.mu.Lock()
	dir := p.dir
	p.mu.Unlock()
	if dir.fd < 0 {
		return "", fmt.Errorf("sidecar for %s: destination directory not open", r.Path)
	}
	b, err := json.MarshalIndent(sidecarOf(p, d, r), "", "  ")
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
