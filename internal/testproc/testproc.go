// Package testproc starts real helper processes that hold files open, for
// tests. The helper is the test binary itself, re-executed with a script of
// steps: every package that uses it calls Main from its TestMain.
package testproc

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/gob"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const envScript = "RELINKD_TESTPROC_SCRIPT"

// Step is one action of a holder process. Each step that creates
// descriptors appends them to the holder's FDs, in order.
type Step struct {
	Op    string `json:"op"`
	Path  string `json:"path,omitempty"`
	To    string `json:"to,omitempty"`
	Flag  string `json:"flag,omitempty"` // r, w, rw, a (append)
	Excl  bool   `json:"excl,omitempty"`
	Index int    `json:"index,omitempty"` // into FDs
	Data  string `json:"data,omitempty"`
	Size  int    `json:"size,omitempty"`
	Count int    `json:"count,omitempty"`
	Ms    int    `json:"ms,omitempty"`
	// Pause is the wait between two flips of a Swapper (0: none).
	Pause time.Duration `json:"pause,omitempty"`
}

// Open opens (creating if needed, mode 0644) path with flag r, w, rw or a.
func Open(path, flag string) Step { return Step{Op: "open", Path: path, Flag: flag} }

// TmpFile opens an unnamed O_TMPFILE file in dir, with O_EXCL if excl.
func TmpFile(dir string, excl bool) Step { return Step{Op: "tmpfile", Path: dir, Excl: excl} }

// Memfd creates a memfd named name.
func Memfd(name string) Step { return Step{Op: "memfd", Path: name} }

// SecretMem creates a memfd_secret(2) file of one page: a regular file on
// the kernel's internal secretmem mount, named "/secretmem (deleted)".
func SecretMem() Step { return Step{Op: "secretmem"} }

// Pipe creates a pipe (two descriptors: read end, write end).
func Pipe() Step { return Step{Op: "pipe"} }

// SocketPair creates a Unix socket pair (two descriptors).
func SocketPair() Step { return Step{Op: "socketpair"} }

// Unlink removes path.
func Unlink(path string) Step { return Step{Op: "unlink", Path: path} }

// Link hard-links path to to.
func Link(path, to string) Step { return Step{Op: "link", Path: path, To: to} }

// Write writes data at the current position of FDs[index].
func Write(index int, data string) Step { return Step{Op: "write", Index: index, Data: data} }

// Append writes count chunks of size bytes to FDs[index], pausing every
// between chunks. Chunk k (from 0) is filled with byte 'a'+k%26.
func Append(index, size, count int, every time.Duration) Step {
	return Step{Op: "append", Index: index, Size: size, Count: count, Ms: int(every / time.Millisecond)}
}

// Truncate truncates FDs[index] to size bytes.
func Truncate(index, size int) Step { return Step{Op: "truncate", Index: index, Size: size} }

// Dup2 makes the descriptor FDs[to] refer to the open file of FDs[from]
// (dup2(2)): the number stays, the file behind it changes.
func Dup2(from, to int) Step { return Step{Op: "dup2", Index: from, Count: to} }

// SwapFD is the descriptor number a Swapper flips.
const SwapFD = 100

// Swapper is the attack of a holder that swaps the file behind one
// descriptor number. count times, it creates dir/x_K (K from 0) holding
// "x_K\n", opens it (as descriptor SwapFD+1), unlinks it, and then for
// each (at least once) makes descriptor SwapFD refer in turn to that
// deleted file and to decoy
// (opened once, read-only) with dup2(2), waiting pause between two flips
// (0: as fast as it can). Then it closes both and goes on with the next.
// A scanner that takes the name from one look at /proc/PID/fd/SwapFD and
// the identity from another sees the deleted name with decoy's inode.
func Swapper(dir, decoy string, count int, each, pause time.Duration) Step {
	return Step{Op: "swapper", Path: dir, To: decoy, Count: count, Ms: int(each / time.Millisecond), Pause: pause}
}

// Close closes FDs[index].
func Close(index int) Step { return Step{Op: "close", Index: index} }

// Sleep pauses the holder.
func Sleep(d time.Duration) Step { return Step{Op: "sleep", Ms: int(d / time.Millisecond)} }

// Ready prints the readiness line now instead of after the last step.
func Ready() Step { return Step{Op: "ready"} }

// Exit ends the holder at once with status 0.
func Exit() Step { return Step{Op: "exit"} }

// Options change how the holder is started.
type Options struct {
	Unshare  bool // run in a new mount namespace (unshare -m)
	UID, GID int  // run as this user when UID > 0
	// Command, when set, returns the command that runs the holder binary
	// self, such as a wrapper that enters a container and execs self in
	// it (internal/testcontainer). Its environment and pipes are set here.
	Command func(self string) *exec.Cmd
	// Forked says that Command forks the holder (unshare --fork): the
	// holder is then the command's only child, and Holder.PID its pid.
	Forked bool
}

// Holder is a running helper process.
type Holder struct {
	PID int
	FDs []int

	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	done  chan struct{}
	err   error
}

// Start runs a holder with steps and waits for its readiness line.
func Start(t testing.TB, steps ...Step) *Holder {
	t.Helper()
	return StartWith(t, Options{}, steps...)
}

// StartWith is Start with options.
func StartWith(t testing.TB, opt Options, steps ...Step) *Holder {
	t.Helper()
	script, err := encode(steps)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if opt.UID > 0 {
		self = reachableCopy(t, self)
	}
	var cmd *exec.Cmd
	switch {
	case opt.Command != nil:
		cmd = opt.Command(self)
	case opt.Unshare:
		cmd = exec.Command("unshare", "-m", "--propagation", "private", self)
	default:
		cmd = exec.Command(self)
	}
	cmd.Env = append(os.Environ(), envScript+"="+string(script))
	cmd.Stderr = os.Stderr
	if opt.UID > 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(opt.UID), Gid: uint32(opt.GID)}}
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start holder: %v", err)
	}
	h := &Holder{PID: cmd.Process.Pid, cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout), done: make(chan struct{})}
	line, err := h.out.ReadString('\n')
	fields := strings.Fields(line)
	if err != nil || len(fields) == 0 || fields[0] != "ready" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("holder %d: no readiness line: %q %v", h.PID, line, err)
	}
	t.Cleanup(h.Kill)
	if opt.Forked {
		if h.PID, err = onlyChild(h.PID); err != nil {
			t.Fatalf("holder: %v", err)
		}
	}
	for _, f := range fields[1:] {
		n, _ := strconv.Atoi(f)
		h.FDs = append(h.FDs, n)
	}
	go func() {
		h.err = cmd.Wait()
		close(h.done)
	}()
	return h
}

// Do runs more steps in the holder and waits until they are done.
func (h *Holder) Do(t testing.TB, steps ...Step) {
	t.Helper()
	for _, s := range steps {
		b, err := encode([]Step{s})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fmt.Fprintf(h.stdin, "%s\n", b); err != nil {
			t.Fatalf("holder %d: send %s: %v", h.PID, s.Op, err)
		}
		if s.Op == "exit" {
			h.Wait(t)
			continue
		}
		line, err := h.out.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != "ok" {
			t.Fatalf("holder %d: step %s: %q %v", h.PID, s.Op, line, err)
		}
	}
}

// onlyChild returns the pid of the only child of pid (proc(5):
// /proc/PID/task/TID/children).
func onlyChild(pid int) (int, error) {
	p := strconv.Itoa(pid)
	b, err := os.ReadFile("/proc/" + p + "/task/" + p + "/children")
	if err != nil {
		return 0, fmt.Errorf("children of %d: %w", pid, err)
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		return 0, fmt.Errorf("process %d has children %q, want one", pid, f)
	}
	return strconv.Atoi(f[0])
}

// reachableCopy copies the executable bin into a new directory that
// every user may enter, and returns the copy: go test builds its binaries
// in a private (0700) directory, where another user cannot run them.
func reachableCopy(t testing.TB, bin string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "relinkd-holder-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(dir, filepath.Base(bin))
	if err := os.WriteFile(cp, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return cp
}

// Wait waits for the holder to exit.
func (h *Holder) Wait(t testing.TB) {
	t.Helper()
	select {
	case <-h.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("holder %d did not exit", h.PID)
	}
}

// Done is closed when the holder has exited.
func (h *Holder) Done() <-chan struct{} { return h.done }

// Exit closes the holder's stdin, which makes it exit, and waits.
func (h *Holder) Exit(t testing.TB) {
	t.Helper()
	h.stdin.Close()
	h.Wait(t)
}

// Kill ends the holder at once and reaps it.
func (h *Holder) Kill() {
	_ = h.cmd.Process.Kill()
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
	}
}

// IsHolder reports whether this process was started as a holder, for a
// TestMain that prepares something (such as building a binary) before
// calling Main.
func IsHolder() bool {
	_, ok := os.LookupEnv(envScript)
	return ok
}

// Main runs the holder when the binary was started as one, else the tests.
func Main(m *testing.M) {
	if script, ok := os.LookupEnv(envScript); ok {
		os.Exit(runHolder(script))
	}
	os.Exit(m.Run())
}

func runHolder(script string) int {
	steps, err := decode(script)
	if err != nil {
		fmt.Fprintln(os.Stderr, "holder: bad script:", err)
		return 2
	}
	var fds []int
	ready := false
	announce := func() {
		parts := []string{"ready"}
		for _, fd := range fds {
			parts = append(parts, strconv.Itoa(fd))
		}
		fmt.Println(strings.Join(parts, " "))
		ready = true
	}
	for _, s := range steps {
		if s.Op == "ready" {
			announce()
			continue
		}
		if err := do(s, &fds); err != nil {
			fmt.Fprintf(os.Stderr, "holder: %s %q: %v\n", s.Op, s.Path, err)
			return 1
		}
	}
	if !ready {
		announce()
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		more, err := decode(in.Text())
		if err != nil || len(more) != 1 {
			fmt.Println("err", err)
			continue
		}
		if err := do(more[0], &fds); err != nil {
			fmt.Println("err", err)
			continue
		}
		fmt.Println("ok")
	}
	return 0
}

// swapper runs a Swapper step.
func swapper(s Step) error {
	decoy, err := unix.Open(s.To, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(decoy)
	each := time.Duration(s.Ms) * time.Millisecond
	for k := 0; k < s.Count; k++ {
		name := s.Path + "/x_" + strconv.Itoa(k)
		fd, err := unix.Open(name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return err
		}
		if _, err := unix.Write(fd, []byte("x_"+strconv.Itoa(k)+"\n")); err != nil {
			return err
		}
		if err := unix.Unlink(name); err != nil {
			return err
		}
		// Kept above SwapFD, so that a sweep (which orders by number)
		// comes to the flipped number first.
		if err := unix.Dup3(fd, SwapFD+1, unix.O_CLOEXEC); err != nil {
			return err
		}
		unix.Close(fd)
		fd = SwapFD + 1
		end := time.Now().Add(each)
		for i := 0; i < 2 || time.Now().Before(end); i++ {
			from := fd
			if i%2 == 1 {
				from = decoy
			}
			if err := unix.Dup3(from, SwapFD, 0); err != nil {
				return err
			}
			if s.Pause > 0 {
				time.Sleep(s.Pause)
			}
		}
		unix.Close(SwapFD)
		unix.Close(fd)
	}
	return nil
}

// encode turns steps into one line of text. gob keeps strings as raw bytes,
// so paths that are not UTF-8 survive (JSON would replace those bytes).
func encode(steps []Step) (string, error) {
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(steps); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes()), nil
}

func decode(s string) ([]Step, error) {
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, err
	}
	var steps []Step
	err = gob.NewDecoder(bytes.NewReader(raw)).Decode(&steps)
	return steps, err
}

func openFlags(flag string) int {
	switch flag {
	case "w":
		return unix.O_WRONLY | unix.O_CREAT
	case "rw":
		return unix.O_RDWR | unix.O_CREAT
	case "a":
		return unix.O_WRONLY | unix.O_CREAT | unix.O_APPEND
	}
	return unix.O_RDONLY
}

// do runs one step. Descriptors are raw (no *os.File), so no finalizer
// closes them behind the test's back.
func do(s Step, fds *[]int) error {
	fd := func() int {
		if s.Index < 0 || s.Index >= len(*fds) {
			return -1
		}
		return (*fds)[s.Index]
	}
	switch s.Op {
	case "open":
		n, err := unix.Open(s.Path, openFlags(s.Flag), 0o644)
		if err != nil {
			return err
		}
		*fds = append(*fds, n)
	case "tmpfile":
		flags := unix.O_TMPFILE | unix.O_RDWR
		if s.Excl {
			flags |= unix.O_EXCL
		}
		n, err := unix.Open(s.Path, flags, 0o600)
		if err != nil {
			return err
		}
		*fds = append(*fds, n)
	case "memfd":
		n, err := unix.MemfdCreate(s.Path, 0)
		if err != nil {
			return err
		}
		*fds = append(*fds, n)
	case "secretmem":
		r, _, errno := unix.Syscall(unix.SYS_MEMFD_SECRET, unix.O_CLOEXEC, 0, 0)
		if errno != 0 {
			return fmt.Errorf("memfd_secret: %w", errno)
		}
		if err := unix.Ftruncate(int(r), 4096); err != nil {
			return err
		}
		*fds = append(*fds, int(r))
	case "pipe":
		p := make([]int, 2)
		if err := unix.Pipe(p); err != nil {
			return err
		}
		*fds = append(*fds, p...)
	case "socketpair":
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			return err
		}
		*fds = append(*fds, p[0], p[1])
	case "unlink":
		return unix.Unlink(s.Path)
	case "link":
		return unix.Link(s.Path, s.To)
	case "write":
		_, err := unix.Write(fd(), []byte(s.Data))
		return err
	case "append":
		for k := 0; k < s.Count; k++ {
			buf := []byte(strings.Repeat(string(rune('a'+k%26)), s.Size))
			if _, err := unix.Write(fd(), buf); err != nil {
				return err
			}
			if s.Ms > 0 && k+1 < s.Count {
				time.Sleep(time.Duration(s.Ms) * time.Millisecond)
			}
		}
	case "truncate":
		return unix.Ftruncate(fd(), int64(s.Size))
	case "dup2":
		if s.Count < 0 || s.Count >= len(*fds) {
			return fmt.Errorf("dup2: no descriptor %d", s.Count)
		}
		return unix.Dup3(fd(), (*fds)[s.Count], 0)
	case "swapper":
		return swapper(s)
	case "close":
		return unix.Close(fd())
	case "sleep":
		time.Sleep(time.Duration(s.Ms) * time.Millisecond)
	case "exit":
		os.Exit(0)
	default:
		return fmt.Errorf("unknown op %q", s.Op)
	}
	return nil
}
