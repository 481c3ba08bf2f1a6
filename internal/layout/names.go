package layout

import (
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/relinkd/relinkd/pkg/scanner"
)

// CheckRescuedName checks that rel, a rescued file's path below its root,
// is the name the engine gives the file that a sidecar describes: the
// holder's path, pid and descriptor (and, for a holder in another mount
// namespace, its container's directory in rescue.container_dir, see
// ContainerName) as mounts.Location.Rel writes them, with the time the name
// itself carries and maybe a ".K" for a name that was taken.
func CheckRescuedName(rel string, c *scanner.Candidate) error {
	n, ok := ParseRescued(rel[strings.LastIndexByte(rel, '/')+1:])
	if !ok {
		return fmt.Errorf("%q is not a rescued file's name", rel)
	}
	want := RelName(c, n.Time)
	if n.K > 0 {
		want += "." + strconv.Itoa(n.K)
	}
	if rel == want || c.MntNS != 0 && rel == path.Join(ContainerName(c), want) {
		return nil
	}
	return fmt.Errorf("the file is %s, but the engine would have named the file described (pid %d fd %d, %q) %s", rel, c.PID, c.FD, c.Path, want)
}

// maxName is the longest file name most Linux filesystems take (NAME_MAX).
const maxName = 255

// RelName returns where c goes inside a rescue root: the holder's path
// without its leading "/", with "." and ".." dropped and control bytes
// turned into "_", and a suffix that makes it unique:
//
//	/var/log/app.log  →  var/log/app.log.20261121T203000Z.pid123.fd4
//
// (time of the decision in UTC, holder pid, descriptor). The base name is
// shortened so that it and its sidecar (SidecarSuffix) fit in NAME_MAX.
func RelName(c *scanner.Candidate, now time.Time) string {
	var parts []string
	for _, comp := range strings.Split(string(c.Path), "/") {
		if comp == "" || comp == "." || comp == ".." {
			continue
		}
		b := []byte(comp)
		for i, ch := range b {
			if ch < 0x20 || ch == 0x7f {
				b[i] = '_'
			}
		}
		parts = append(parts, truncName(string(b), maxName))
	}
	if len(parts) == 0 {
		parts = []string{"unnamed"}
	}
	suffix := Suffix(now, c.PID, c.FD)
	last := len(parts) - 1
	// The whole leaf must fit the engine's budget (MaxLeaf), or the
	// engine would cut the suffix that retention and list go by.
	parts[last] = truncName(parts[last], MaxLeaf-len(suffix)) + suffix
	return strings.Join(parts, "/")
}

// truncName cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncName(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && s[i]&0xc0 == 0x80 {
		i--
	}
	return s[:i]
}

// ContainerName names the directory below rescue.container_dir that holds
// the files of c's container: its container id (scanner.Candidate), else
// mntns-N after its mount namespace.
func ContainerName(c *scanner.Candidate) string {
	id := c.ContainerID
	if id != "" && id != "." && id != ".." && len(id) <= 64 && !strings.ContainsAny(id, "/\x00") {
		return id
	}
	return "mntns-" + strconv.FormatUint(c.MntNS, 10)
}
