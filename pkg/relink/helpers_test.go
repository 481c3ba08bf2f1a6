package relink

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
	"github.com/relinkd/relinkd/pkg/scanner"
)

func TestMain(m *testing.M) { testproc.Main(m) }

// candidateOf builds the scanner's view of pid's fd from /proc, the way a
// sweep does, so these tests do not depend on the sweep itself.
func candidateOf(t *testing.T, pid, fd int) scanner.Candidate {
	t.Helper()
	base := "/proc/" + strconv.Itoa(pid)
	link := base + "/fd/" + strconv.Itoa(fd)
	var st unix.Stat_t
	if err := unix.Stat(link, &st); err != nil {
		t.Fatalf("stat %s: %v", link, err)
	}
	target, err := os.Readlink(link)
	if err != nil {
		t.Fatal(err)
	}
	statLine, err := os.ReadFile(base + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	stat, err := procfs.ParseStat(statLine)
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.ReadFile(base + "/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := procfs.ParseFDInfo(info)
	if err != nil {
		t.Fatal(err)
	}
	comm, _ := os.ReadFile(base + "/comm")
	tmp := fi.Flags&unix.O_TMPFILE == unix.O_TMPFILE
	return scanner.Candidate{
		PID: pid, StartTime: stat.StartTime, Comm: strings.TrimSpace(string(comm)), FD: fd, Flags: fi.Flags,
		Dev: st.Dev, Ino: st.Ino, Nlink: uint64(st.Nlink), Size: st.Size,
		Mode: fs.FileMode(st.Mode & 0o777), Owner: st.Uid, Group: st.Gid,
		Path:    []byte(strings.TrimSuffix(target, " (deleted)")),
		TmpFile: tmp, Linkable: st.Nlink > 0 || tmp,
	}
}

// newEngine returns an engine logging to the test.
func newEngine(t *testing.T, opts Options) *Engine {
	t.Helper()
	return New(opts, zaptest.NewLogger(t))
}

// randomBytes returns n reproducible pseudo-random bytes.
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// writeFile creates path with data, failing the test on error.
func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// holdDeleted starts a holder that opens path with flag and unlinks it,
// and returns the holder and the candidate for its descriptor.
func holdDeleted(t *testing.T, path, flag string) (*testproc.Holder, scanner.Candidate) {
	t.Helper()
	h := testproc.Start(t, testproc.Open(path, flag), testproc.Unlink(path))
	return h, candidateOf(t, h.PID, h.FDs[0])
}

// eachWalk runs f with each way of resolving destinations: openat2, and
// the component walk the engine falls back to where a sandbox refuses it.
// Each engine f makes must use w (e.walk = w).
func eachWalk(t *testing.T, f func(t *testing.T, w walker)) {
	t.Helper()
	for _, w := range []walker{{openat2: true}, {openat2: false}} {
		t.Run(strings.ReplaceAll(w.String(), " ", "_"), func(t *testing.T) {
			if w.openat2 {
				if err := ProbeOpenat2(); err != nil {
					testfs.Skip(t, "openat2 refused here: "+err.Error())
				}
			}
			f(t, w)
		})
	}
}

// pin pins c, failing the test on error, and closes the pin at cleanup.
func pin(t *testing.T, e *Engine, c scanner.Candidate) *Pin {
	t.Helper()
	p, err := e.Pin(c)
	if err != nil {
		t.Fatalf("pin: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// regularFiles lists every non-directory below root (nothing at all is
// expected after a failed rescue: no partial file, no stray temp).
func regularFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !d.IsDir() {
			out = append(out, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ctx returns a context that ends with the test (or after a minute).
func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func readAll(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustEqualBytes(t *testing.T, what string, want, got []byte) {
	t.Helper()
	if !bytes.Equal(want, got) {
		t.Fatalf("%s: content differs: want %d bytes sha256 %s, got %d bytes sha256 %s", what, len(want), sha(want), len(got), sha(got))
	}
}

// posixACL encodes a system.posix_acl_access value (version 2 entries of
// tag, perm, id; include/uapi/linux/posix_acl_xattr.h).
func posixACL(entries ...[3]uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

// resultOf is the Result of what Rescue or Adopt returned, for tests that
// do not follow.
func resultOf(r *Rescued, err error) (Result, error) {
	if r == nil {
		return Result{}, err
	}
	return r.Result(), err
}
