package scanner

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testcontainer"
	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
)

// newBPFScanner returns a scanner on the BPF backend, or skips (fails
// under CI=true) where it cannot load.
func newBPFScanner(t *testing.T) *Scanner {
	t.Helper()
	testfs.RequireRoot(t)
	s := New(Options{Backend: BackendBPF}, zaptest.NewLogger(t))
	t.Cleanup(func() { s.Close() })
	if name, why := s.Backend(); name != BackendBPF {
		testfs.Skip(t, "bpf backend unavailable: "+why)
	}
	return s
}

// trapSet starts holders of every kind of descriptor the scanner must
// tell apart on a filesystem of type fstype, and returns them.
func trapSet(t *testing.T, fstype string) (string, []*testproc.Holder) {
	t.Helper()
	dir := testfs.Mount(t, fstype, 300)
	p := func(name string) string { return filepath.Join(dir, name) }
	for _, n := range []string{"plain.log", "line\nbreak.log", "bad\xff\xfename.log", "linked.log", "live (deleted)", "kept.log", "gone (deleted)"} {
		if err := os.WriteFile(p(n), []byte("seed"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	h := testproc.Start(t,
		testproc.Open(p("plain.log"), "a"),
		testproc.Open(p("line\nbreak.log"), "r"),
		testproc.Open(p("bad\xff\xfename.log"), "r"),
		testproc.Open(p("linked.log"), "rw"),
		testproc.Open(p("live (deleted)"), "r"),
		testproc.Open(p("kept.log"), "r"),
		testproc.Open(p("gone (deleted)"), "r"),
		testproc.TmpFile(dir, false),
		testproc.Memfd("decoy"),
		testproc.Pipe(),
		testproc.SocketPair(),
		testproc.SecretMem(),
		testproc.Open(dir, "r"),
		testproc.Write(0, "hello world"),
		testproc.Write(7, "tmp"),
		testproc.Write(8, "memfd data"),
		testproc.Link(p("linked.log"), p("other-name.log")),
		testproc.Unlink(p("plain.log")),
		testproc.Unlink(p("line\nbreak.log")),
		testproc.Unlink(p("bad\xff\xfename.log")),
		testproc.Unlink(p("linked.log")),
		testproc.Unlink(p("gone (deleted)")),
	)
	return dir, []*testproc.Holder{h}
}

// TestBackendParity: on the same live state, the BPF and /proc backends
// report the same candidates, every field, and the same holder pairs
// (Track): the trap set on tmpfs, ext4, XFS and btrfs (literal
// "x (deleted)" names live and deleted, memfd, secretmem, O_TMPFILE, a
// second hard link, pipes, sockets, a directory), a holder in its own
// mount namespace, holders in containers, and a process whose leader has
// exited.
func TestBackendParity(t *testing.T) {
	b := newBPFScanner(t)
	testfs.RequireTool(t, "python3")
	p := New(Options{Backend: BackendProc}, zaptest.NewLogger(t))
	var roots []string
	var pidList []int
	add := func(hs ...*testproc.Holder) {
		for _, h := range hs {
			pidList = append(pidList, h.PID)
		}
	}
	for _, fstype := range []string{"tmpfs", "ext4", "xfs", "btrfs"} {
		dir, hs := trapSet(t, fstype)
		roots = append(roots, dir)
		add(hs...)
	}
	// Holder pairs the walk writes once per run of descriptors in one
	// directory of one mount: directories interleaved, and one directory
	// seen through two mounts (a bind mount), must each give their pair.
	{
		base := testfs.Mount(t, "tmpfs", 16)
		bind := t.TempDir()
		if err := unix.Mount(base, bind, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { testfs.Unmount(t, bind) })
		roots = append(roots, base, bind)
		if err := os.Mkdir(filepath.Join(base, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		var steps []testproc.Step
		for i, p := range []string{"sub/a", "top-a", "sub/b", "top-b", "sub/c"} {
			f := filepath.Join(base, p)
			if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			steps = append(steps, testproc.Open(f, "r"), testproc.Open(filepath.Join(bind, p), "r"))
			if i == 2 {
				steps = append(steps, testproc.Open(filepath.Join(base, "sub"), "r"))
			}
		}
		steps = append(steps, testproc.Unlink(filepath.Join(base, "sub/c")))
		add(testproc.Start(t, steps...))
	}
	// A mount namespace of its own (a sandboxed service) and containers.
	dir := t.TempDir()
	roots = append(roots, dir, "/var/log")
	add(testproc.StartWith(t, testproc.Options{Unshare: true},
		testproc.Open(filepath.Join(dir, "s"), "w"), testproc.Write(0, "sandboxed"), testproc.Unlink(filepath.Join(dir, "s"))))
	held := []testproc.Step{
		testproc.Open("/var/log/app.log", "w"), testproc.Write(0, "in the container\n"), testproc.Unlink("/var/log/app.log"),
		testproc.Open("/var/log/live.log", "w"),
	}
	add(testcontainer.New(t, testcontainer.Options{Cgroup: testcontainer.Docker}).Start(t, held...))
	add(testcontainer.New(t, testcontainer.Options{}).Start(t, held...))
	// An exited leader.
	tdir := testfs.Mount(t, "tmpfs", 16)
	roots = append(roots, tdir)
	orphan := filepath.Join(tdir, "orphan.log")
	if err := os.WriteFile(orphan, []byte("still here"), 0o644); err != nil {
		t.Fatal(err)
	}
	pidList = append(pidList, testproc.StartExitedLeader(t, orphan))

	keep := func(path []byte) bool {
		for _, r := range roots {
			if bytes.HasPrefix(path, []byte(r+"/")) || string(path) == r {
				return true
			}
		}
		return false
	}
	ctx := context.Background()
	for _, track := range []bool{false, true} {
		if track {
			b.Track(keep)
			p.Track(keep)
		}
		t.Run(fmt.Sprintf("track=%v", track), func(t *testing.T) {
			want, err := p.SweepPIDs(ctx, pidList)
			if err != nil {
				t.Fatal(err)
			}
			if n := len(want.Candidates); n < 4*6+4 {
				t.Fatalf("the /proc backend found %d candidates, want at least %d: %+v", n, 4*6+4, want.Candidates)
			}
			got, err := b.SweepPIDs(ctx, pidList)
			if err != nil {
				t.Fatal(err)
			}
			compare(t, "SweepPIDs", want, got, track)
			// A full walk, kept to the same processes.
			full, err := b.Sweep(ctx)
			if err != nil {
				t.Fatal(err)
			}
			full.Candidates = slices.DeleteFunc(full.Candidates, func(c Candidate) bool { return !slices.Contains(pidList, c.PID) })
			full.Held = slices.DeleteFunc(full.Held, func(h Held) bool { return !slices.Contains(pidList, h.PID) })
			compare(t, "Sweep", want, full, track)
			// Many processes: one walk filtered here, or one walk each,
			// as their timing says (each forced in turn).
			many := append(slices.Clone(pidList), make([]int, maxPIDWalks)...)
			for i := len(pidList); i < len(many); i++ {
				many[i] = 1 << 30 // no such process
			}
			k := b.bpf.Load()
			for _, mode := range []struct {
				name      string
				full, per int64
				each      bool
			}{{"filtered", 1, 1 << 40, false}, {"each", 1 << 40, 1, true}} {
				k.fullNS.Store(mode.full)
				k.perPIDNS.Store(mode.per)
				if k.walkEach(len(many), b.workers) != mode.each {
					t.Fatalf("walkEach(%d) with full %d, per pid %d: want %v", len(many), mode.full, mode.per, mode.each)
				}
				got, err = b.SweepPIDs(ctx, many)
				k.fullNS.Store(0)
				k.perPIDNS.Store(0)
				if err != nil {
					t.Fatal(err)
				}
				compare(t, "SweepPIDs(many, "+mode.name+")", want, got, track)
			}
		})
	}
}

func compare(t *testing.T, what string, want, got Result, track bool) {
	t.Helper()
	if len(want.Candidates) != len(got.Candidates) {
		t.Errorf("%s: %d candidates, want %d", what, len(got.Candidates), len(want.Candidates))
	}
	wm := map[[2]int]Candidate{}
	for _, c := range want.Candidates {
		wm[[2]int{c.PID, c.FD}] = c
	}
	for _, c := range got.Candidates {
		w, ok := wm[[2]int{c.PID, c.FD}]
		if !ok {
			t.Errorf("%s: pid %d fd %d %q reported by bpf only: %+v", what, c.PID, c.FD, c.Path, c)
			continue
		}
		delete(wm, [2]int{c.PID, c.FD})
		if !reflect.DeepEqual(w, c) {
			t.Errorf("%s: pid %d fd %d:\n-want %+v\n+got  %+v", what, c.PID, c.FD, w, c)
		}
	}
	for _, c := range wm {
		t.Errorf("%s: pid %d fd %d %q reported by /proc only", what, c.PID, c.FD, c.Path)
	}
	if !track {
		return
	}
	// The pairs are compared without their descriptors: /proc lists
	// each, the BPF walk the first of each run in one directory, so its
	// are some of /proc's.
	type pair struct {
		pid int
		dir string
	}
	procFDs := make(map[pair][]int32)
	for _, h := range want.Held {
		if len(h.FDs) == 0 {
			t.Errorf("%s: /proc pair without descriptors: %+v", what, h)
		}
		procFDs[pair{h.PID, h.Dir}] = h.FDs
	}
	for _, h := range got.Held {
		all := procFDs[pair{h.PID, h.Dir}]
		if len(h.FDs) == 0 || slices.ContainsFunc(h.FDs, func(fd int32) bool { return !slices.Contains(all, fd) }) {
			t.Errorf("%s: BPF pair's descriptors %v, want some of /proc's %v: %+v", what, h.FDs, all, h)
		}
	}
	sortHeld := func(h []Held) []Held {
		h = slices.Clone(h)
		for i := range h {
			h[i].FDs = nil
		}
		slices.SortFunc(h, func(a, b Held) int {
			if a.PID != b.PID {
				return a.PID - b.PID
			}
			return strings.Compare(a.Dir, b.Dir)
		})
		return h
	}
	if w, g := sortHeld(want.Held), sortHeld(got.Held); !reflect.DeepEqual(w, g) {
		t.Errorf("%s: holder pairs:\n-want %v\n+got  %v", what, w, g)
	}
	if len(want.Held) == 0 {
		t.Errorf("%s: no holder pairs", what)
	}
}

// TestBPFRecordFields: what the program reads of the inode (dev, ino,
// nlink, size, mode) is what stat(2) says, on filesystems whose getattr
// reports the inode as it is.
func TestBPFRecordFields(t *testing.T) {
	s := newBPFScanner(t)
	for _, fstype := range []string{"tmpfs", "ext4", "xfs"} {
		t.Run(fstype, func(t *testing.T) {
			_, hs := trapSet(t, fstype)
			h := hs[0]
			buf, err := s.bpf.Load().read(s.bpf.Load().objs.Sweep, h.PID, nil)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			if err := parseRecords(buf, func(r *record) {
				n++
				var st unix.Stat_t
				if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", r.tgid, r.fd), &st); err != nil {
					t.Fatal(err)
				}
				got := [5]uint64{kernelDev(r.dev), r.ino, uint64(r.nlink), uint64(r.size), uint64(r.mode)}
				want := [5]uint64{st.Dev, st.Ino, uint64(st.Nlink), uint64(st.Size), uint64(st.Mode)}
				if got != want || r.kind != recCandidate || r.tid != h.PID {
					t.Errorf("fd %d: -want %v +got %v (kind %d tid %d)", r.fd, want, got, r.kind, r.tid)
				}
				// The holder, as /proc/PID/stat, status and ns/mnt say.
				start, comm := statOf(t, h.PID)
				if r.startBoot/nsPerTick != start || string(r.comm) != comm || r.uid != 0 || r.mntNS != mntNSOf(t, h.PID) {
					t.Errorf("fd %d holder: -want start %d comm %q uid 0 mntns %d +got start %d comm %q uid %d mntns %d",
						r.fd, start, comm, mntNSOf(t, h.PID), r.startBoot/nsPerTick, r.comm, r.uid, r.mntNS)
				}
			}); err != nil {
				t.Fatal(err)
			}
			if n != 6 {
				t.Errorf("%d records, want 6 (four deleted, one deleted literal \"(deleted)\", O_TMPFILE)", n)
			}
		})
	}
}

// envBackendChild makes the test binary print the backend that
// New(Options{Backend: auto}) picks, and why, and exit.
const envBackendChild = "RELINKD_TEST_BACKEND_CHILD"

func backendChild() int {
	s := New(Options{Backend: BackendAuto}, nil)
	name, why := s.Backend()
	fmt.Printf("%s\n%s\n", name, why)
	s.Close()
	return 0
}

// TestBackendFallbackAtLoad: where BPF cannot load or does not fit, the
// /proc backend serves and Backend says why: a proc root that is no
// procfs (a fixture tree), a process without CAP_BPF, CAP_PERFMON and
// CAP_SYS_ADMIN (setpriv(1) drops them from the bounding set), and a
// configuration that asks for proc.
func TestBackendFallbackAtLoad(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "setpriv")
	newBPFScanner(t) // BPF loads here with full capabilities
	core, logs := observer.New(zapcore.WarnLevel)
	fixture := New(Options{Backend: BackendBPF, ProcRoot: "../../internal/procfs/testdata/proc"}, zap.New(core))
	if name, why := fixture.Backend(); name != BackendProc || !strings.Contains(why, "not a procfs") {
		t.Errorf("fixture root: backend %s (%s), want proc because it is not a procfs", name, why)
	}
	if logs.FilterMessage("scan backend bpf unavailable, sweeping /proc").Len() != 1 {
		t.Errorf("backend bpf asked for and unavailable: want one warning, got %v", logs.All())
	}
	if res, err := fixture.Sweep(context.Background()); err != nil || res.Procs == 0 {
		t.Errorf("fixture sweep through /proc: %d processes read, %v; want the fixture's", res.Procs, err)
	}
	if name, _ := New(Options{Backend: BackendProc}, nil).Backend(); name != BackendProc {
		t.Errorf("backend proc: got %s", name)
	}

	cmd := exec.Command("setpriv", "--bounding-set", "-bpf,-perfmon,-sys_admin", "--", os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envBackendChild+"=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("setpriv child: %v", err)
	}
	lines := strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)
	if len(lines) != 2 || lines[0] != BackendProc || !strings.Contains(lines[1], "operation not permitted") {
		t.Errorf("without CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN: %q, want proc and the permission error", out)
	}
}

// TestBackendFallbackAtRun: a BPF sweep that fails (its iterator links or
// its program closed under it) falls back to /proc for that sweep, with
// one warning, and finds the same files.
func TestBackendFallbackAtRun(t *testing.T) {
	testfs.RequireRoot(t)
	dir := testfs.Mount(t, "tmpfs", 16)
	f := filepath.Join(dir, "a.log")
	h := testproc.Start(t, testproc.Open(f, "w"), testproc.Write(0, "abc"), testproc.Unlink(f))
	core, logs := observer.New(zapcore.WarnLevel)
	s := New(Options{Backend: BackendBPF}, zap.New(core))
	t.Cleanup(func() { s.Close() })
	if name, why := s.Backend(); name != BackendBPF {
		testfs.Skip(t, "bpf backend unavailable: "+why)
	}
	want, err := New(Options{Backend: BackendProc}, nil).SweepPIDs(context.Background(), []int{h.PID})
	if err != nil || len(want.Candidates) != 1 {
		t.Fatalf("/proc sweep: %+v, %v", want.Candidates, err)
	}
	b := s.bpf.Load()
	b.all.Close()
	b.track.Close()
	b.objs.Sweep.Close()
	for i := range 2 {
		full, err := s.Sweep(context.Background())
		if err != nil {
			t.Fatalf("sweep %d: %v", i, err)
		}
		if !slices.ContainsFunc(full.Candidates, func(c Candidate) bool { return reflect.DeepEqual(c, want.Candidates[0]) }) {
			t.Errorf("full sweep %d after the failure: %+v not found", i, want.Candidates[0])
		}
		got, err := s.SweepPIDs(context.Background(), []int{h.PID})
		if err != nil || !reflect.DeepEqual(got.Candidates, want.Candidates) {
			t.Errorf("targeted sweep %d after the failure:\n-want %+v\n+got  %+v, %v", i, want.Candidates, got.Candidates, err)
		}
	}
	if n := logs.FilterMessage("bpf sweep failed, sweeping /proc instead").Len(); n != 1 {
		t.Errorf("%d warnings, want 1 (once until BPF works again): %v", n, logs.All())
	}
}

// envPIDNSChild makes the test binary, run in a pid namespace of its own,
// hold a deleted file in the directory it names, sweep with both
// backends and print "ok N" when they agree on N candidates.
const envPIDNSChild = "RELINKD_TEST_PIDNS_CHILD"

func pidnsChild(dir string) int {
	f := filepath.Join(dir, "inner.log")
	h := exec.Command("sh", "-c", `exec 3>"$1"; echo inner >&3; rm "$1"; echo ready; exec sleep 60`, "sh", f)
	out, _ := h.StdoutPipe()
	if err := h.Start(); err != nil {
		fmt.Println(err)
		return 1
	}
	defer func() { h.Process.Kill(); h.Wait() }()
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		fmt.Println("holder:", line, err)
		return 1
	}
	b := New(Options{Backend: BackendBPF}, nil)
	defer b.Close()
	if name, why := b.Backend(); name != BackendBPF {
		fmt.Println("bpf backend unavailable:", why)
		return 1
	}
	p := New(Options{Backend: BackendProc}, nil)
	ctx := context.Background()
	want, err1 := p.Sweep(ctx)
	got, err2 := b.Sweep(ctx)
	one, err3 := b.SweepPIDs(ctx, []int{h.Process.Pid})
	if err := errors.Join(err1, err2, err3); err != nil {
		fmt.Println(err)
		return 1
	}
	if !reflect.DeepEqual(want.Candidates, got.Candidates) {
		fmt.Printf("full sweeps differ:\n-want %+v\n+got  %+v\n", want.Candidates, got.Candidates)
		return 1
	}
	if len(one.Candidates) != 1 || one.Candidates[0].PID != h.Process.Pid || string(one.Candidates[0].Path) != f {
		fmt.Printf("SweepPIDs(%d): %+v\n", h.Process.Pid, one.Candidates)
		return 1
	}
	fmt.Printf("ok %d\n", len(got.Candidates))
	return 0
}

// TestBackendPIDNamespace: in a pid namespace of its own (unshare
// --pid --mount-proc, as a container runs the daemon), the BPF backend
// reports the namespace's pids and leaves out processes it does not show
// (the holder of a deleted file outside), as /proc does: both backends
// agree there, and a walk of one process takes the namespace's pid.
func TestBackendPIDNamespace(t *testing.T) {
	newBPFScanner(t)
	testfs.RequireTool(t, "unshare")
	dir := testfs.Mount(t, "tmpfs", 16)
	outside := filepath.Join(dir, "outside.log")
	testproc.Start(t, testproc.Open(outside, "w"), testproc.Write(0, "outside"), testproc.Unlink(outside))
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envPIDNSChild+"="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "ok ") {
		t.Fatalf("in a pid namespace: %v\n%s", err, out)
	}
	if strings.TrimSpace(string(out)) != "ok 1" {
		t.Errorf("in a pid namespace: %s, want the one file held there (not the one outside)", out)
	}
}

// TestBackendCloseDuringSweeps: Close while sweeps run (a daemon stopping
// during a full pass) waits for none and breaks none: the programs go
// when the last sweep using them ends, later sweeps read /proc. Run with
// -race.
func TestBackendCloseDuringSweeps(t *testing.T) {
	s := newBPFScanner(t)
	dir := testfs.Mount(t, "tmpfs", 16)
	f := filepath.Join(dir, "a.log")
	h := testproc.Start(t, testproc.Open(f, "w"), testproc.Unlink(f))
	ctx := context.Background()
	done := make(chan error)
	for range 4 {
		go func() {
			var err error
			for range 20 {
				var res Result
				if res, err = s.SweepPIDs(ctx, []int{h.PID}); err == nil && len(res.Candidates) != 1 {
					err = fmt.Errorf("%d candidates, want 1", len(res.Candidates))
				}
				if err != nil {
					break
				}
			}
			done <- err
		}()
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	if name, _ := s.Backend(); name != BackendProc {
		t.Errorf("after Close: backend %s, want proc", name)
	}
}

// TestSweepGone: both backends list the processes a targeted sweep found
// exited, one at a time and several, and not the live ones.
func TestSweepGone(t *testing.T) {
	dir := t.TempDir()
	live := testproc.Start(t, testproc.Open(filepath.Join(dir, "a"), "rw"))
	dead := testproc.Start(t)
	dead.Kill()
	for _, s := range []*Scanner{New(Options{Backend: BackendProc}, nil), newBPFScanner(t)} {
		name, _ := s.Backend()
		for _, pids := range [][]int{{dead.PID}, {live.PID, dead.PID}} {
			res, err := s.SweepPIDs(context.Background(), pids)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(res.Gone, []int{dead.PID}) {
				t.Errorf("%s: SweepPIDs(%v): gone %v, want [%d]", name, pids, res.Gone, dead.PID)
			}
		}
	}
}
