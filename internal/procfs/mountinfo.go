package procfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Mount is one line of /proc/PID/mountinfo (proc(5)).
type Mount struct {
	ID         int
	Parent     int
	Major      uint32
	Minor      uint32
	Root       string // the directory of the filesystem that is mounted here
	MountPoint string // where, in the reading process's mount namespace
	Options    string // per-mount options (ro, nosuid, …)
	FSType     string
	Source     string
}

// ReadOnly reports whether the mount is read-only.
func (m *Mount) ReadOnly() bool {
	for _, o := range strings.Split(m.Options, ",") {
		if o == "ro" {
			return true
		}
	}
	return false
}

// ErrMountInfo is wrapped by mountinfo parse errors.
var ErrMountInfo = errors.New("malformed mountinfo")

// ReadMountInfo reads and parses a mountinfo file such as
// /proc/self/mountinfo or /proc/PID/mountinfo.
func ReadMountInfo(path string) ([]Mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	ms, err := ParseMountInfo(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ms, nil
}

// ParseMountInfo parses the mountinfo format of proc(5):
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// Paths have space, tab, newline and backslash escaped as octal (\040 …);
// they are decoded here (prometheus/procfs leaves them as they are).
func ParseMountInfo(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep < 0 || sep+2 >= len(f) {
			return nil, fmt.Errorf("line %d %q: %w", n, line, ErrMountInfo)
		}
		id, err1 := strconv.Atoi(f[0])
		parent, err2 := strconv.Atoi(f[1])
		majS, minS, ok := strings.Cut(f[2], ":")
		maj, err3 := strconv.ParseUint(majS, 10, 32)
		mnr, err4 := strconv.ParseUint(minS, 10, 32)
		if err := errors.Join(err1, err2, err3, err4); err != nil || !ok {
			return nil, fmt.Errorf("line %d %q: %w", n, line, ErrMountInfo)
		}
		out = append(out, Mount{
			ID: id, Parent: parent, Major: uint32(maj), Minor: uint32(mnr),
			Root: unescapeOctal(f[3]), MountPoint: unescapeOctal(f[4]), Options: f[5],
			FSType: f[sep+1], Source: unescapeOctal(f[sep+2]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// MountIDs returns the mount ids (first field) listed in a mountinfo file,
// and nothing else: the scanner asks only whether a descriptor's mnt_id is
// listed (memfd and secretmem files are on mounts that none lists), which
// needs neither a full parse nor an allocation per line.
func MountIDs(b []byte) map[int]bool {
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

// unescapeOctal decodes the \NNN escapes the kernel writes in mountinfo
// paths (seq_path with " \t\n\\").
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b bytes.Buffer
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
