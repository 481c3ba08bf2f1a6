package scanner

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
)

func newScanner(t *testing.T) *Scanner {
	t.Helper()
	return New(Options{}, zaptest.NewLogger(t))
}

// sweepPIDs runs a targeted sweep and indexes the result by pid and fd.
func sweepPIDs(t *testing.T, pids ...int) (Result, map[[2]int]Candidate) {
	t.Helper()
	res, err := newScanner(t).SweepPIDs(context.Background(), pids)
	if err != nil {
		t.Fatalf("SweepPIDs: %v", err)
	}
	byFD := make(map[[2]int]Candidate)
	for _, c := range res.Candidates {
		byFD[[2]int{c.PID, c.FD}] = c
	}
	return res, byFD
}

// statOf returns the start time and comm of pid, read independently of
// the scanner (proc(5): comm is in parentheses, starttime is field 22).
func statOf(t *testing.T, pid int) (uint64, string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	fields := strings.Fields(s[close+2:])
	st, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return st, s[open+1 : close]
}

// fdinfoOf reads mnt_id and flags of pid's fd independently.
func fdinfoOf(t *testing.T, pid, fd int) procfs.FDInfo {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := procfs.ParseFDInfo(b)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func statPath(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestSweepExactSet holds one of every kind of descriptor on tmpfs and on
// a loop-mounted ext4 and checks that exactly the deleted regular files are
// reported, with every field right.
func TestSweepExactSet(t *testing.T) {
	testfs.RequireRoot(t)
	for _, fstype := range []string{"tmpfs", "ext4"} {
		t.Run(fstype, func(t *testing.T) {
			dir := testfs.Mount(t, fstype, 32)
			p := func(name string) string { return filepath.Join(dir, name) }
			// Files that will be deleted, stat'ed first for their identity.
			names := []string{"plain.log", "line\nbreak.log", "bad\xff\xfename.log", "linked.log"}
			for _, n := range names {
				if err := os.WriteFile(p(n), []byte("seed"), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(p("live (deleted)"), []byte("live"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p("kept.log"), []byte("kept"), 0o644); err != nil {
				t.Fatal(err)
			}
			ids := map[string]unix.Stat_t{}
			for _, n := range names {
				ids[n] = statPath(t, p(n))
			}
			h := testproc.Start(t,
				testproc.Open(p("plain.log"), "a"),           // 0: deleted, appended
				testproc.Open(p("line\nbreak.log"), "r"),     // 1: deleted, newline in name
				testproc.Open(p("bad\xff\xfename.log"), "r"), // 2: deleted, not UTF-8
				testproc.Open(p("linked.log"), "rw"),         // 3: deleted, second link kept
				testproc.Open(p("live (deleted)"), "r"),      // 4: live, suffix in name
				testproc.Open(p("kept.log"), "r"),            // 5: live
				testproc.TmpFile(dir, false),                 // 6: O_TMPFILE
				testproc.Memfd("decoy"),                      // 7: memfd
				testproc.Pipe(),                              // 8, 9
				testproc.SocketPair(),                        // 10, 11
				testproc.SecretMem(),                         // 12: memfd_secret
				testproc.Write(0, "hello world"),
				testproc.Write(6, "tmp"),
				testproc.Write(7, "memfd data"),
				testproc.Link(p("linked.log"), p("other-name.log")),
				testproc.Unlink(p("plain.log")),
				testproc.Unlink(p("line\nbreak.log")),
				testproc.Unlink(p("bad\xff\xfename.log")),
				testproc.Unlink(p("linked.log")),
			)
			res, got := sweepPIDs(t, h.PID)
			if res.Procs != 1 || res.FDs < 12 {
				t.Errorf("Procs = %d, FDs = %d; want 1 and >= 12", res.Procs, res.FDs)
			}
			startTime, comm := statOf(t, h.PID)
			exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", h.PID))
			type want struct {
				idx      int
				name     string
				size     int64
				nlink    uint64
				mode     os.FileMode
				linkable bool
				tmp      bool
				pos      int64
			}
			wants := []want{
				{0, "plain.log", 15, 0, 0o640, false, false, 15},
				{1, "line\nbreak.log", 4, 0, 0o640, false, false, 0},
				{2, "bad\xff\xfename.log", 4, 0, 0o640, false, false, 0},
				{3, "linked.log", 4, 1, 0o640, true, false, 0},
				{6, "", 3, 0, 0o600, true, true, 3},
			}
			if len(got) != len(wants) {
				t.Errorf("found %d candidates, want %d: %+v", len(got), len(wants), res.Candidates)
			}
			for _, w := range wants {
				fd := h.FDs[w.idx]
				c, ok := got[[2]int{h.PID, fd}]
				if !ok {
					t.Errorf("fd %d (%q) not reported", fd, w.name)
					continue
				}
				fi := fdinfoOf(t, h.PID, fd)
				var fst unix.Stat_t
				if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", h.PID, fd), &fst); err != nil {
					t.Fatal(err)
				}
				if w.name != "" {
					if id := ids[w.name]; id.Dev != c.Dev || id.Ino != c.Ino {
						t.Errorf("%q: dev/ino = %d/%d, want %d/%d", w.name, c.Dev, c.Ino, id.Dev, id.Ino)
					}
					if string(c.Path) != p(w.name) {
						t.Errorf("path = %q, want %q", c.Path, p(w.name))
					}
				} else {
					wantPath := fmt.Sprintf("%s/#%d", dir, fst.Ino)
					if string(c.Path) != wantPath {
						t.Errorf("tmpfile path = %q, want %q", c.Path, wantPath)
					}
				}
				checks := []struct {
					field     string
					got, want any
				}{
					{"StartTime", c.StartTime, startTime},
					{"Comm", c.Comm, comm},
					{"Exe", c.Exe, exe},
					{"UID", c.UID, uint32(0)},
					{"Flags", c.Flags, fi.Flags},
					{"Pos", c.Pos, w.pos},
					{"MntID", c.MntID, fi.MntID},
					{"Dev", c.Dev, fst.Dev},
					{"Ino", c.Ino, fst.Ino},
					{"Nlink", c.Nlink, w.nlink},
					{"Size", c.Size, w.size},
					{"Blocks", c.Blocks, fst.Blocks},
					{"Mode", c.Mode, w.mode},
					{"Owner", c.Owner, uint32(0)},
					{"Group", c.Group, uint32(0)},
					{"Linkable", c.Linkable, w.linkable},
					{"TmpFile", c.TmpFile, w.tmp},
				}
				for _, ch := range checks {
					if ch.got != ch.want {
						t.Errorf("fd %d %s = %v, want %v", fd, ch.field, ch.got, ch.want)
					}
				}
			}
			if c := got[[2]int{h.PID, h.FDs[0]}]; !c.Writable() {
				t.Errorf("append descriptor not writable: flags %o", c.Flags)
			}
			if c := got[[2]int{h.PID, h.FDs[1]}]; c.Writable() {
				t.Errorf("read-only descriptor writable: flags %o", c.Flags)
			}
		})
	}
}

// TestSweepVanishedProcess: a pid that is gone, and a zombie, never fail
// the sweep and never produce candidates.
// TestSweepSparseBlocks: Blocks is what the inode allocates (st_blocks),
// not its apparent size: a 64 MiB file with 5 bytes written holds a block.
func TestSweepSparseBlocks(t *testing.T) {
	testfs.RequireRoot(t)
	dir := testfs.Mount(t, "tmpfs", 16)
	path := filepath.Join(dir, "sparse")
	h := testproc.Start(t, testproc.Open(path, "w"), testproc.Write(0, "12345"), testproc.Truncate(0, 64<<20), testproc.Unlink(path))
	_, got := sweepPIDs(t, h.PID)
	c, ok := got[[2]int{h.PID, h.FDs[0]}]
	if !ok {
		t.Fatalf("sparse file not found: %v", got)
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", h.PID, h.FDs[0]), &st); err != nil {
		t.Fatal(err)
	}
	if c.Size != 64<<20 || c.Blocks != st.Blocks || c.Blocks == 0 || c.Blocks*512 >= c.Size {
		t.Errorf("size %d, blocks %d; want size %d, blocks %d (st_blocks, a few, not the apparent size)", c.Size, c.Blocks, 64<<20, st.Blocks)
	}
	if r := c.Record(""); r.Allocated != st.Blocks*512 {
		t.Errorf("record allocated = %d, want %d", r.Allocated, st.Blocks*512)
	}
}

func TestSweepVanishedProcess(t *testing.T) {
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	zombie := exec.Command("sh", "-c", "exit 0")
	if err := zombie.Start(); err != nil {
		t.Fatal(err)
	}
	defer zombie.Wait()
	// Wait until the child is a zombie: state Z in /proc/PID/stat.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", zombie.Process.Pid))
		if s := string(b); strings.Contains(s, ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("child never became a zombie")
		}
		time.Sleep(5 * time.Millisecond)
	}
	res, _ := sweepPIDs(t, gone.Process.Pid, zombie.Process.Pid)
	if len(res.Candidates) != 0 {
		t.Errorf("candidates from gone/zombie processes: %+v", res.Candidates)
	}
	if res.Vanished < 1 {
		t.Errorf("Vanished = %d, want the exited pid counted", res.Vanished)
	}
}

// TestSweepKernelThread: kernel threads have no descriptors of their own;
// reading them is neither an error nor a denial.
func TestSweepKernelThread(t *testing.T) {
	const pfKthread = 0x00200000 // include/linux/sched.h
	kthread := 0
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if flags, _ := strconv.ParseUint(fields[6], 10, 64); flags&pfKthread != 0 {
			kthread = pid
			break
		}
	}
	if kthread == 0 {
		testfs.Skip(t, "no kernel thread visible in this pid namespace")
	}
	res, _ := sweepPIDs(t, kthread)
	if len(res.Candidates) != 0 || res.Denied != 0 || res.Procs+res.Vanished != 1 {
		t.Errorf("kernel thread %d: %+v; want it read (or gone) without candidates or denial", kthread, res)
	}
}

// TestSweepChurn sweeps repeatedly while processes holding deleted files
// start and exit: every sweep succeeds, every candidate is complete.
func TestSweepChurn(t *testing.T) {
	testfs.RequireRoot(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				f := filepath.Join(dir, fmt.Sprintf("churn-%d-%d", g, i))
				script := fmt.Sprintf("exec 3<>'%s'; echo x >&3; rm '%s'; exit 0", f, f)
				_ = exec.Command("sh", "-c", script).Run()
			}
		}(g)
	}
	s := newScanner(t)
	vanished := 0
	for i := 0; i < 40; i++ {
		res, err := s.Sweep(context.Background())
		if err != nil {
			t.Fatalf("sweep %d: %v", i, err)
		}
		vanished += res.Vanished
		for _, c := range res.Candidates {
			if c.PID == 0 || c.Ino == 0 || len(c.Path) == 0 || c.Comm == "" {
				t.Errorf("incomplete candidate: %+v", c)
			}
		}
	}
	cancel()
	wg.Wait()
	t.Logf("vanished during 40 sweeps: %d", vanished)
}

// TestSweepNotInspectable: a sweep by an unprivileged user counts the
// processes it may not read and still succeeds.
func TestSweepNotInspectable(t *testing.T) {
	testfs.RequireRoot(t)
	dir := t.TempDir()
	h := testproc.Start(t, testproc.Open(filepath.Join(dir, "secret"), "w"), testproc.Unlink(filepath.Join(dir, "secret")))
	bin := copyTestBinary(t)
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), envSweepChild+"="+strconv.Itoa(h.PID))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unprivileged sweep: %v\n%s", err, out)
	}
	var cands, denied int
	if _, err := fmt.Sscanf(string(out), "candidates=%d denied=%d", &cands, &denied); err != nil {
		t.Fatalf("child output %q: %v", out, err)
	}
	if cands != 0 || denied != 1 {
		t.Errorf("unprivileged sweep of a root holder: candidates=%d denied=%d, want 0 and 1", cands, denied)
	}
}

// envSweepChild makes the test binary run one targeted sweep and print its
// counts (see TestMain), for TestSweepNotInspectable.
const envSweepChild = "RELINKD_SCANNER_SWEEP_PID"

func sweepChild(pidText string) int {
	pid, _ := strconv.Atoi(pidText)
	res, err := New(Options{}, nil).SweepPIDs(context.Background(), []int{pid})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Printf("candidates=%d denied=%d\n", len(res.Candidates), res.Denied)
	return 0
}

// copyTestBinary copies the test binary where another user can run it.
func copyTestBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "relinkd-scan-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "scanner.test")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestSweepMountNamespace: a holder in its own mount namespace deletes a
// file on a tmpfs only it can see. The path is in its view; mnt_id is one
// of its mounts, not ours; dev identifies the filesystem.
func TestSweepMountNamespace(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "unshare")
	dir := t.TempDir()
	script := fmt.Sprintf(`mount -t tmpfs private '%s' && exec 3<>'%s/ns.log' && echo data >&3 && rm '%s/ns.log' && echo ready && exec sleep 60`, dir, dir, dir)
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("holder: %q %v", line, err)
	}
	_, got := sweepPIDs(t, cmd.Process.Pid)
	c, ok := got[[2]int{cmd.Process.Pid, 3}]
	if !ok {
		t.Fatalf("fd 3 of the namespaced holder not found: %v", got)
	}
	if want := dir + "/ns.log"; string(c.Path) != want {
		t.Errorf("path = %q, want %q", c.Path, want)
	}
	theirs, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", cmd.Process.Pid))
	ours, _ := os.ReadFile("/proc/self/mountinfo")
	if !procfs.MountIDs(theirs)[c.MntID] || procfs.MountIDs(ours)[c.MntID] {
		t.Errorf("mnt_id %d: in holder's mountinfo %v, in ours %v; want true, false",
			c.MntID, procfs.MountIDs(theirs)[c.MntID], procfs.MountIDs(ours)[c.MntID])
	}
	if st := statPath(t, dir); st.Dev == c.Dev {
		t.Errorf("dev %d is that of the host directory; want the private tmpfs", c.Dev)
	}
	if c.Size != 5 {
		t.Errorf("size = %d, want 5", c.Size)
	}
	// A pin on it (opened through the magic link) keeps the holder's
	// vfsmount: identified from the pin, it is the same candidate.
	pin, err := unix.Open(fmt.Sprintf("/proc/%d/fd/3", cmd.Process.Pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pin)
	if pc, err := Identify("/proc", &c, pin); err != nil || !reflect.DeepEqual(pc, c) {
		t.Errorf("Identify of the pin:\n-want %+v\n+got  %+v, %v", c, pc, err)
	}
}

// TestLsofParity: for regular files with link count 0, relinkd and
// `lsof +L1 -nP` report the same (pid, fd) set on the same live state.
func TestLsofParity(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "lsof")
	dir := testfs.Mount(t, "ext4", 32)
	var holders []*testproc.Holder
	for i := 0; i < 6; i++ {
		var steps []testproc.Step
		for j := 0; j < 4; j++ {
			f := filepath.Join(dir, fmt.Sprintf("p%d-f%d", i, j))
			steps = append(steps, testproc.Open(f, "rw"), testproc.Write(j, strings.Repeat("x", j*100)))
			if j != 3 { // one file per holder stays linked
				steps = append(steps, testproc.Unlink(f))
			}
		}
		steps = append(steps, testproc.TmpFile(dir, false), testproc.Memfd("m"), testproc.Pipe())
		holders = append(holders, testproc.Start(t, steps...))
	}
	var pids []string
	ours := map[string]bool{}
	var pidList []int
	for _, h := range holders {
		pids = append(pids, strconv.Itoa(h.PID))
		pidList = append(pidList, h.PID)
	}
	res, _ := sweepPIDs(t, pidList...)
	for _, c := range res.Candidates {
		if c.Nlink == 0 {
			ours[fmt.Sprintf("%d/%d", c.PID, c.FD)] = true
		}
	}
	out, err := exec.Command("lsof", "+L1", "-nP", "-a", "-p", strings.Join(pids, ","), "-F", "pftkn").Output()
	if err != nil && len(out) == 0 {
		t.Fatalf("lsof: %v", err)
	}
	theirs := map[string]bool{}
	var pid, fd, typ, name string
	flush := func() {
		if _, err := strconv.Atoi(fd); err == nil && typ == "REG" && !strings.HasPrefix(name, "/memfd:") {
			theirs[pid+"/"+fd] = true
		}
		fd, typ, name = "", "", ""
	}
	for _, line := range strings.Split(string(out), "\n") {
		if line == "" {
			continue
		}
		switch line[0] {
		case 'p':
			flush()
			pid = line[1:]
		case 'f':
			flush()
			fd = line[1:]
		case 't':
			typ = line[1:]
		case 'n':
			name = line[1:]
		}
	}
	flush()
	if len(ours) != 6*4 {
		t.Errorf("relinkd found %d nlink-0 files, want %d", len(ours), 6*4)
	}
	for k := range ours {
		if !theirs[k] {
			t.Errorf("%s: found by relinkd, not by lsof", k)
		}
	}
	for k := range theirs {
		if !ours[k] {
			t.Errorf("%s: found by lsof, not by relinkd", k)
		}
	}
}

// TestSweepExitedLeader: a process whose main thread has exited
// (pthread_exit from main) keeps its descriptors in its other threads;
// the leader's /proc/PID/fd is empty, so the sweep reads them through
// /proc/PID/task/TID. lsof +L1 misses these.
func TestSweepExitedLeader(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "python3")
	dir := testfs.Mount(t, "tmpfs", 16)
	path := filepath.Join(dir, "orphan.log")
	if err := os.WriteFile(path, []byte("still here"), 0o644); err != nil {
		t.Fatal(err)
	}
	pid := testproc.StartExitedLeader(t, path)
	res, err := New(Options{}, zaptest.NewLogger(t)).SweepPIDs(context.Background(), []int{pid})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Candidates) != 1 {
		t.Fatalf("want the one deleted file, got %+v", res.Candidates)
	}
	c := res.Candidates[0]
	if c.PID != pid || c.TID == 0 || c.TID == pid || string(c.Path) != path || c.Size != 10 || c.StartTime == 0 {
		t.Errorf("candidate %+v: want pid %d, a live thread's TID, path %q, size 10, a start time", c, pid, path)
	}
	if want := fmt.Sprintf("%d/task/%d", pid, c.TID); c.ProcDir() != want {
		t.Errorf("ProcDir %q, want %q", c.ProcDir(), want)
	}
}

// TestSweepFDs: a full sweep's holder pairs carry the descriptors of each
// directory, and SweepFDs reads only the descriptors it is given: the
// deleted one among them is found, a closed one is skipped, the others
// are not read, and nothing is tracked.
func TestSweepFDs(t *testing.T) {
	d1, d2 := t.TempDir(), t.TempDir()
	a, b, c := filepath.Join(d1, "a"), filepath.Join(d1, "b"), filepath.Join(d2, "c")
	h := testproc.Start(t, testproc.Open(a, "rw"), testproc.Open(b, "rw"), testproc.Open(c, "rw"), testproc.Unlink(c))
	s := New(Options{}, nil)
	s.Track(func(path []byte) bool { return bytes.HasPrefix(path, []byte(d1)) || bytes.HasPrefix(path, []byte(d2)) })
	full, err := s.SweepPIDs(context.Background(), []int{h.PID})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]int32{}
	for _, x := range full.Held {
		if x.PID == h.PID {
			got[x.Dir] = x.FDs
		}
	}
	want := map[string][]int32{d1: {int32(h.FDs[0]), int32(h.FDs[1])}, d2: {int32(h.FDs[2])}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("holder pairs %v, want %v", got, want)
	}

	// c is deleted but not asked for; a is asked for but live. Neither is
	// a candidate. Then a is deleted: it is, and so is c when asked for.
	res, err := s.SweepFDs(context.Background(), []Target{{PID: h.PID, FDs: []int32{int32(h.FDs[0]), 999}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Candidates) != 0 || len(res.Held) != 0 || res.FDs != 1 || res.Vanished != 0 {
		t.Fatalf("before the unlink: %d candidates, %d pairs, %d descriptors, %d vanished; want 0, 0, 1, 0",
			len(res.Candidates), len(res.Held), res.FDs, res.Vanished)
	}
	if err := os.Remove(a); err != nil {
		t.Fatal(err)
	}
	res, err = s.SweepFDs(context.Background(), []Target{{PID: h.PID, FDs: []int32{int32(h.FDs[0]), int32(h.FDs[2])}}})
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, x := range res.Candidates {
		if x.PID != h.PID || x.UID != 0 || x.Comm == "" {
			t.Fatalf("candidate without its holder: %+v", x)
		}
		paths = append(paths, string(x.Path))
	}
	if !slices.Equal(paths, []string{a, c}) || len(res.Held) != 0 {
		t.Fatalf("after the unlink: candidates %q, %d pairs; want %q and none", paths, len(res.Held), []string{a, c})
	}
}
