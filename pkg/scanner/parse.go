package scanner

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// ErrParse marks a /proc file whose contents could not be parsed.
var ErrParse = errors.New("scanner: cannot parse")

// deletedSuffix is what d_path(3) appends to a name that was unlinked
// (fs/d_path.c, prepend_unreachable/d_unlinked).
var deletedSuffix = []byte(" (deleted)")

// memfdPrefix is how memfd_create(2) files read back through readlink.
var memfdPrefix = []byte("/memfd:")

// secretmemName is how memfd_secret(2) files read back through readlink.
var secretmemName = []byte("/secretmem")

// onInternalMount reports whether path is how an anonymous in-kernel file
// reads back: a memfd or a secretmem file, both regular files on a mount
// that no mountinfo lists. A real file of that name is on a listed mount,
// which the caller checks.
func onInternalMount(path []byte) bool {
	return bytes.HasPrefix(path, memfdPrefix) || bytes.Equal(path, secretmemName)
}

// trimDeleted returns the link text without the " (deleted)" suffix and
// whether the suffix was there. Only absolute paths qualify: pipes, sockets
// and anonymous inodes read back as "pipe:[N]", "socket:[N]",
// "anon_inode:[…]" and never carry the suffix with a leading slash.
func trimDeleted(link []byte) ([]byte, bool) {
	if len(link) == 0 || link[0] != '/' || !bytes.HasSuffix(link, deletedSuffix) {
		return link, false
	}
	return link[:len(link)-len(deletedSuffix)], true
}

// fdInfo is the part of /proc/PID/fdinfo/FD that the scanner keeps.
type fdInfo struct {
	Pos   int64
	Flags uint32
	MntID int
}

// parseFDInfo parses /proc/PID/fdinfo/FD (proc(5)): "pos:", "flags:"
// (octal) and "mnt_id:" lines; other lines (inotify, eventfd …) are ignored.
func parseFDInfo(b []byte) (fdInfo, error) {
	var fi fdInfo
	var seen int
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		key, val, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		val = bytes.TrimSpace(val)
		var err error
		switch string(key) {
		case "pos":
			fi.Pos, err = strconv.ParseInt(string(val), 10, 64)
			seen |= 1
		case "flags":
			var f uint64
			f, err = strconv.ParseUint(string(val), 8, 32)
			fi.Flags = uint32(f)
			seen |= 2
		case "mnt_id":
			fi.MntID, err = strconv.Atoi(string(val))
			seen |= 4
		}
		if err != nil {
			return fdInfo{}, fmt.Errorf("%w: fdinfo %s %q: %w", ErrParse, key, val, err)
		}
	}
	if seen != 7 {
		return fdInfo{}, fmt.Errorf("%w: fdinfo lacks pos, flags or mnt_id", ErrParse)
	}
	return fi, nil
}

// parseFDName parses a directory entry name of /proc/PID/fd.
func parseFDName(name []byte) (int, bool) {
	if len(name) == 0 || len(name) > 10 {
		return 0, false
	}
	n := 0
	for _, c := range name {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// mountIDs returns the mount ids (first field) listed in a mountinfo file.
func mountIDs(b []byte) map[int]bool {
	ids := make(map[int]bool)
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		id, _, ok := bytes.Cut(line, []byte{' '})
		if !ok {
			continue
		}
		if n, err := strconv.Atoi(string(id)); err == nil {
			ids[n] = true
		}
	}
	return ids
}

// procStat is the part of /proc/PID/stat the scanner keeps.
type procStat struct {
	Comm      string
	StartTime uint64
}

// parseStat parses /proc/PID/stat (proc(5)): the command sits in
// parentheses and may itself contain spaces and parentheses, so fields are
// counted from the last ')'; starttime is field 22.
func parseStat(b []byte) (procStat, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procStat{}, fmt.Errorf("%w: stat %q", ErrParse, b)
	}
	fields := bytes.Fields(b[end+1:])
	const startTime = 22 - 3 // fields[0] is field 3 (state)
	if len(fields) <= startTime {
		return procStat{}, fmt.Errorf("%w: stat has %d fields", ErrParse, len(fields)+2)
	}
	st, err := strconv.ParseUint(string(fields[startTime]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("%w: stat starttime %q: %w", ErrParse, fields[startTime], err)
	}
	return procStat{Comm: string(b[open+1 : end]), StartTime: st}, nil
}

// parseStatusUID returns the real uid from /proc/PID/status ("Uid:" is
// followed by the real, effective, saved and filesystem uids).
func parseStatusUID(b []byte) (uint32, error) {
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		rest, ok := bytes.CutPrefix(line, []byte("Uid:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) == 0 {
			break
		}
		uid, err := strconv.ParseUint(string(f[0]), 10, 32)
		if err != nil {
			return 0, fmt.Errorf("%w: status Uid %q: %w", ErrParse, f[0], err)
		}
		return uint32(uid), nil
	}
	return 0, fmt.Errorf("%w: status has no Uid line", ErrParse)
}
