package scanner

import (
	"encoding/json"
	"io/fs"
	"strconv"

	"github.com/relinkd/relinkd/internal/logging"
)

// Record is the JSON form of a Candidate (one object per line in
// `relinkd scan --json`). Path bytes that are not valid UTF-8 cannot be a
// JSON string exactly: Path then has each invalid byte replaced by U+FFFD
// and PathBase64 holds the exact bytes (standard base64).
type Record struct {
	PID        int     `json:"pid"`
	StartTime  uint64  `json:"start_time"`
	Comm       string  `json:"comm"`
	Exe        string  `json:"exe"`
	UID        uint32  `json:"uid"`
	FD         int     `json:"fd"`
	Flags      string  `json:"flags"`
	Pos        int64   `json:"pos"`
	MntID      int     `json:"mnt_id"`
	Path       string  `json:"path"`
	PathBase64 string  `json:"path_base64,omitempty"`
	Size       int64   `json:"size"`
	Allocated  int64   `json:"allocated"` // st_blocks × 512: bytes on disk
	Nlink      uint64  `json:"nlink"`
	Dev        uint64  `json:"dev"`
	Ino        uint64  `json:"ino"`
	Mode       string  `json:"mode"`
	Owner      uint32  `json:"owner"`
	Group      uint32  `json:"group"`
	TmpFile    bool    `json:"tmpfile"`
	Linkable   bool    `json:"linkable"`
	Rule       *string `json:"rule"`

	// The holder's mount namespace and container, only when it is not
	// the host's (see Candidate.MntNS).
	MntNS       uint64 `json:"mntns,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
}

// Record converts c for JSON output; rule is the matching watch rule's
// name, or "" for none (encoded as null).
func (c *Candidate) Record(rule string) Record {
	r := Record{
		PID: c.PID, StartTime: c.StartTime, Comm: c.Comm, Exe: c.Exe, UID: c.UID,
		FD: c.FD, Flags: octal(c.Flags), Pos: c.Pos, MntID: c.MntID,
		Path: string(c.Path), Size: c.Size, Allocated: c.Blocks * 512, Nlink: c.Nlink, Dev: c.Dev, Ino: c.Ino,
		Mode: octal(unixPerm(c.Mode)), Owner: c.Owner, Group: c.Group,
		TmpFile: c.TmpFile, Linkable: c.Linkable,
		MntNS: c.MntNS, ContainerID: c.ContainerID,
	}
	r.Path, r.PathBase64 = logging.Name(c.Path)
	if rule != "" {
		r.Rule = &rule
	}
	return r
}

// MarshalJSON makes a Candidate encode as its Record without a rule.
func (c Candidate) MarshalJSON() ([]byte, error) { return json.Marshal(c.Record("")) }

// octal formats v the way ls and stat(1) print modes: "0644".
func octal(v uint32) string { return "0" + strconv.FormatUint(uint64(v), 8) }

// unixPerm returns the permission and set-id/sticky bits of m as st_mode has them.
func unixPerm(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}
