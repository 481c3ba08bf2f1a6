package mounts

import (
	"strings"

	"github.com/relinkd/relinkd/internal/procfs"
)

// Mount is one line of /proc/PID/mountinfo (proc(5)); procfs parses it.
type Mount = procfs.Mount

// byID returns the mount with id, or nil.
func byID(ms []Mount, id int) *Mount {
	for i := range ms {
		if ms[i].ID == id {
			return &ms[i]
		}
	}
	return nil
}

// isUnder reports whether p is dir or inside it (both clean, absolute).
func isUnder(p, dir string) bool {
	if dir == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// relTo returns p relative to dir ("" when equal); p must be under dir.
func relTo(p, dir string) string {
	if p == dir {
		return ""
	}
	if dir == "/" {
		return strings.TrimPrefix(p, "/")
	}
	return strings.TrimPrefix(p, dir+"/")
}
