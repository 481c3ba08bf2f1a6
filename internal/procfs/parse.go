package procfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// ErrParse marks a /proc file whose contents could not be parsed.
var ErrParse = errors.New("procfs: cannot parse")

// ParseID parses a directory entry name of /proc, /proc/PID/task or
// /proc/PID/fd: a pid, a tid or a descriptor number. Anything else ("self",
// ".", "..", "sys") is not one.
func ParseID(name []byte) (int, bool) {
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

// ParseDirents walks the linux_dirent64 records that getdents64(2) wrote
// into b: d_ino u64, d_off s64, d_reclen u16, d_type u8, then the
// NUL-terminated name. A torn tail is ignored. The name slice is only valid
// during the call.
func ParseDirents(b []byte, fn func(name []byte)) {
	const nameOff = 19
	for len(b) >= nameOff {
		reclen := int(binary.NativeEndian.Uint16(b[16:18]))
		if reclen < nameOff || reclen > len(b) {
			return
		}
		name := b[nameOff:reclen]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		fn(name)
		b = b[reclen:]
	}
}

// Stat is the part of /proc/PID/stat that relinkd keeps.
type Stat struct {
	Comm      string
	StartTime uint64 // clock ticks after boot, field 22
}

// ParseStat parses /proc/PID/stat (proc(5)): the command sits in
// parentheses and may itself contain spaces and parentheses, so fields are
// counted from the last ')'; starttime is field 22.
func ParseStat(b []byte) (Stat, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return Stat{}, fmt.Errorf("%w: stat %q", ErrParse, b)
	}
	fields := bytes.Fields(b[end+1:])
	const startTime = 22 - 3 // fields[0] is field 3 (state)
	if len(fields) <= startTime {
		return Stat{}, fmt.Errorf("%w: stat has %d fields", ErrParse, len(fields)+2)
	}
	st, err := strconv.ParseUint(string(fields[startTime]), 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("%w: stat starttime %q: %w", ErrParse, fields[startTime], err)
	}
	return Stat{Comm: string(b[open+1 : end]), StartTime: st}, nil
}

// ParseStatusUID returns the real uid from /proc/PID/status ("Uid:" is
// followed by the real, effective, saved and filesystem uids).
func ParseStatusUID(b []byte) (uint32, error) {
	f, ok := statusField(b, "Uid:")
	if !ok {
		return 0, fmt.Errorf("%w: status has no Uid line", ErrParse)
	}
	uid, err := strconv.ParseUint(string(f), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: status Uid %q: %w", ErrParse, f, err)
	}
	return uint32(uid), nil
}

// ErrNoCapEff is returned when a status file has no CapEff line.
var ErrNoCapEff = errors.New("no CapEff line")

// ParseStatusCapEff returns the effective capability set from
// /proc/PID/status ("CapEff:", hexadecimal, capabilities(7)).
func ParseStatusCapEff(b []byte) (uint64, error) {
	f, ok := statusField(b, "CapEff:")
	if !ok {
		return 0, ErrNoCapEff
	}
	n, err := strconv.ParseUint(string(f), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: status CapEff %q: %w", ErrParse, f, err)
	}
	return n, nil
}

// ParseStatusNSpidDepth returns how many pid namespaces the process is
// in, from /proc/PID/status ("NSpid:", Linux 4.1: its pid in each, the
// outermost first); 1 in the initial namespace, 0 when the line is absent.
func ParseStatusNSpidDepth(b []byte) int {
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		if rest, ok := bytes.CutPrefix(line, []byte("NSpid:")); ok {
			return len(bytes.Fields(rest))
		}
	}
	return 0
}

// statusField returns the first word after key on the first line of a
// status file that starts with key.
func statusField(b []byte, key string) ([]byte, bool) {
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		rest, ok := bytes.CutPrefix(line, []byte(key))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) == 0 {
			return nil, false
		}
		return f[0], true
	}
	return nil, false
}

// FDInfo is the part of /proc/PID/fdinfo/FD that relinkd keeps.
type FDInfo struct {
	Pos   int64
	Flags uint32 // open(2) flags as the kernel keeps them (f_flags)
	MntID int
}

// ParseFDInfo parses /proc/PID/fdinfo/FD (proc(5)): "pos:", "flags:"
// (octal) and "mnt_id:" (Linux 3.15) lines; other lines (inotify, eventfd
// …) are ignored. All three must be there.
func ParseFDInfo(b []byte) (FDInfo, error) {
	var fi FDInfo
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
			return FDInfo{}, fmt.Errorf("%w: fdinfo %s %q: %w", ErrParse, key, val, err)
		}
	}
	if seen != 7 {
		return FDInfo{}, fmt.Errorf("%w: fdinfo lacks pos, flags or mnt_id", ErrParse)
	}
	return fi, nil
}

// ParseNSLink parses the link text of /proc/PID/ns/mnt, "mnt:[4026531841]"
// (namespaces(7)), into the namespace's inode number.
func ParseNSLink(b []byte) (uint64, error) { return parseNSLink("mnt", "mount", b) }

// ParsePIDNSLink parses the link text of /proc/PID/ns/pid, "pid:[4026531836]".
func ParsePIDNSLink(b []byte) (uint64, error) { return parseNSLink("pid", "pid", b) }

func parseNSLink(kind, what string, b []byte) (uint64, error) {
	v, ok := bytes.CutPrefix(b, []byte(kind+":["))
	if ok {
		v, ok = bytes.CutSuffix(v, []byte("]"))
	}
	if !ok {
		return 0, fmt.Errorf("%w: %s namespace link %q", ErrParse, what, b)
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%w: %s namespace link %q", ErrParse, what, b)
	}
	return n, nil
}

// ParseLoadavgLastPID returns the pid most recently created on the host:
// the last field of /proc/loadavg (proc(5)).
func ParseLoadavgLastPID(b []byte) (int, bool) {
	s := bytes.TrimSpace(b)
	i := bytes.LastIndexByte(s, ' ')
	pid, err := strconv.Atoi(string(s[i+1:]))
	return pid, err == nil && pid > 0
}
