// Package layout names what relinkd writes inside a rescue root, so the
// engine that writes it and the retention that prunes it agree. Retention
// removes only names that match these predicates: a rescue root may be a
// directory that also holds other people's files.
package layout

import (
	"strconv"
	"strings"
	"time"
)

// SidecarSuffix ends the name of the JSON file beside each rescued file.
const SidecarSuffix = ".relinkd.json"

// MaxSidecarSize bounds what a reader takes from one sidecar: the engine
// writes a few hundred bytes, so a larger file is not one of its own.
const MaxSidecarSize = 64 << 10

// TempMarker is part of every hidden temporary name the engine creates
// where O_TMPFILE is not available: ".LEAF.relinkd-tmp-HEX" or
// ".relinkd-tmp-HEX".
const TempMarker = ".relinkd-tmp-"

// TempRandBytes is how many random bytes the engine puts in a temporary
// name, hex-encoded after TempMarker (2×TempRandBytes characters).
const TempRandBytes = 6

// TimeFormat is the layout of the UTC time in a rescued file's name.
const TimeFormat = "20060102T150405Z"

// MaxUnique is the highest ".K" the engine appends to a rescued name that
// already exists.
const MaxUnique = 999

// MaxLeaf is the longest name the engine publishes a rescued file under
// before its collision suffix: a 255-byte NAME_MAX leaves room for ".999"
// and the sidecar's SidecarSuffix.
const MaxLeaf = 255 - len(".999") - len(SidecarSuffix)

// Suffix is what the engine appends to a file's base name when it rescues
// it: ".TIME.pidPID.fdFD", the time in UTC.
func Suffix(t time.Time, pid, fd int) string {
	return "." + t.UTC().Format(TimeFormat) + ".pid" + strconv.Itoa(pid) + ".fd" + strconv.Itoa(fd)
}

// IsTemp reports whether name (a base name) is one of the engine's
// hidden temporary files, which a crash can leave behind. The marker must
// be followed by exactly the engine's random hex and end the name, so a
// rescued file whose own name contains the marker is not mistaken for one.
func IsTemp(name string) bool {
	n := len(name) - 2*TempRandBytes
	if n < len(TempMarker) || !strings.HasPrefix(name, ".") {
		return false
	}
	return strings.HasSuffix(name[:n], TempMarker) && isLowerHex(name[n:])
}

// IsRescued reports whether name (a base name) is one the engine gives a
// rescued file: LEAF+Suffix, possibly followed by ".K" (1 ≤ K ≤ MaxUnique)
// when that name was taken.
func IsRescued(name string) bool {
	if hasSuffix(name) {
		return true
	}
	i := strings.LastIndexByte(name, '.')
	if i < 0 {
		return false
	}
	k, err := strconv.Atoi(name[i+1:])
	return err == nil && isCanonical(name[i+1:]) && k >= 1 && k <= MaxUnique && hasSuffix(name[:i])
}

// IsSidecar reports whether name (a base name) is the sidecar of a
// rescued file: a rescued name followed by SidecarSuffix.
func IsSidecar(name string) bool {
	base, ok := strings.CutSuffix(name, SidecarSuffix)
	return ok && IsRescued(base)
}

// hasSuffix reports whether name ends with a Suffix: ".TIME.pidN.fdN".
func hasSuffix(name string) bool {
	rest, fd, ok := cutLast(name, ".fd")
	if !ok || !isCanonical(fd) {
		return false
	}
	rest, pid, ok := cutLast(rest, ".pid")
	if !ok || !isCanonical(pid) {
		return false
	}
	n := len(rest) - len(TimeFormat)
	if n < 1 || rest[n-1] != '.' {
		return false
	}
	// Format must give the text back: Parse alone also takes a one-digit hour.
	t, err := time.Parse(TimeFormat, rest[n:])
	return err == nil && t.Format(TimeFormat) == rest[n:]
}

// Name is what a rescued file's name says (see Suffix).
type Name struct {
	Leaf string    // the original base name (as the engine shortened it)
	Time time.Time // when it was rescued, UTC, to the second
	PID  int       // the holder
	FD   int       // its descriptor
	K    int       // the ".K" added when the name was taken, 0 if none
}

// ParseRescued takes a rescued file's base name apart; false when name is
// not one the engine gives (IsRescued).
func ParseRescued(name string) (Name, bool) {
	var n Name
	if !hasSuffix(name) {
		i := strings.LastIndexByte(name, '.')
		if i < 0 || !IsRescued(name) {
			return Name{}, false
		}
		n.K, _ = strconv.Atoi(name[i+1:])
		name = name[:i]
	}
	rest, fd, _ := cutLast(name, ".fd")
	rest, pid, _ := cutLast(rest, ".pid")
	cut := len(rest) - len(TimeFormat)
	n.Time, _ = time.Parse(TimeFormat, rest[cut:])
	n.PID, _ = strconv.Atoi(pid)
	n.FD, _ = strconv.Atoi(fd)
	n.Leaf = rest[:cut-1]
	return n, true
}

// cutLast splits s around the last sep.
func cutLast(s, sep string) (before, after string, found bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// isCanonical reports whether s is a non-negative decimal as
// strconv.Itoa writes it: digits, no sign, no leading zero, at most 19.
func isCanonical(s string) bool {
	if s == "" || len(s) > 19 || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !('0' <= s[i] && s[i] <= '9' || 'a' <= s[i] && s[i] <= 'f') {
			return false
		}
	}
	return true
}
