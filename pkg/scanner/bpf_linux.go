package scanner

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/fsguard"
	"github.com/relinkd/relinkd/internal/procfs"
)

// The in-kernel sweep: bpf/sweep.c, a task_file iterator (Linux >= 5.8,
// BTF), compiled by `go generate` into sweep_bpfel.o and loaded with
// cilium/ebpf, CO-RE relocated against /sys/kernel/btf/vmlinux. Reading
// the iterator runs the program over every descriptor table in the
// kernel; it writes a record for each deleted regular file (and, for the
// holder index, the path of every other descriptor), so a sweep costs a
// few read(2) calls instead of one readlink(2) per descriptor.

// Record kinds and layouts, as bpf/sweep.c writes them (struct rec,
// struct held), little-endian.
const (
	recCandidate = 1
	recHeld      = 2
	recSize      = 96
	heldSize     = 16
)

// bpf(2) commands and the task iterator's link info (include/uapi/linux/bpf.h),
// which cilium/ebpf's link.AttachIter does not fill in: a pid there makes
// the kernel walk that process's threads only (Linux >= 6.1).
const (
	bpfLinkCreate = 28
	bpfIterCreate = 33
)

// record is one decoded record.
type record struct {
	kind          uint16
	tgid, tid, fd int
	flags         uint32
	mntID         int
	mode, nlink   uint32
	dev, ino      uint64
	size, pos     int64
	path          []byte // d_path(3), " (deleted)" included; nil when the kernel refused
	// The holder (candidates only): its leader's start time in ns since
	// boot, real uid and comm, and the mount namespace of the task
	// walked (0: exiting).
	startBoot uint64
	uid       uint32
	mntNS     uint64
	comm      []byte
}

// bpfSweep holds the loaded programs and the links of the full walks.
// It is safe for concurrent use: each sweep opens its own iterator.
type bpfSweep struct {
	// mu guards users and closing: the programs are closed once Close
	// was called and no sweep uses them (a full pass may still be
	// running when the daemon stops).
	mu      sync.Mutex
	users   int
	closing bool

	objs      sweepObjects
	all       *link.Iter // sweep: candidates only
	track     *link.Iter // sweep_track: candidates and every other path
	pidFilter bool       // the kernel takes a pid in the task iterator's link info
	// holder is set when the records' holder fields are what /proc shows
	// this reader: its user and time namespaces are the initial ones (proc(5)
	// maps uids into the reader's user namespace and start times by its
	// time namespace's boot offset).
	holder bool

	// What walks cost, to choose for SweepPIDs between one walk per
	// process and one walk of every table: the last full walk, and a
	// moving average of one process's walk (nanoseconds; 0 until seen).
	fullNS   atomic.Int64
	perPIDNS atomic.Int64
}

// walkEach reports whether n processes cost less walked one by one, by
// workers walkers, than one walk of every table filtered here. The full
// walk's cost grows with every descriptor on the host, a process's with
// its own: on a busy host hundreds of processes are still cheaper one by
// one. Until a full walk was timed, maxPIDWalks decides.
func (b *bpfSweep) walkEach(n, workers int) bool {
	if !b.pidFilter {
		return false
	}
	full, per := b.fullNS.Load(), b.perPIDNS.Load()
	if full == 0 || per == 0 {
		return n <= maxPIDWalks
	}
	return int64(n)*per/int64(max(min(workers, n), 1)) < full
}

// timed records what a walk of n processes took (n 0: every table).
func (b *bpfSweep) timed(n int, walkers int, d time.Duration) {
	if n == 0 {
		b.fullNS.Store(int64(d))
		return
	}
	per := int64(d) * int64(max(walkers, 1)) / int64(n)
	if old := b.perPIDNS.Load(); old != 0 {
		per = (3*old + per) / 4
	}
	b.perPIDNS.Store(per)
}

// The inode numbers of the initial namespaces (PROC_*_INIT_INO,
// include/linux/proc_ns.h).
const (
	initPIDNS  = 0xEFFFFFFC
	initUserNS = 0xEFFFFFFD
	initTimeNS = 0xEFFFFFFA
)

// initialUserTime reports whether this process is in the initial user and
// time namespaces (a kernel without time namespaces has only the initial one).
func initialUserTime() bool {
	self := procfs.New("/proc")
	user, err := self.NS("self", "user")
	if err != nil || user != initUserNS {
		return false
	}
	t, err := self.NS("self", "time")
	return errors.Is(err, fs.ErrNotExist) || (err == nil && t == initTimeNS)
}

// loadBPF loads the programs for a reader whose proc root shows the pid
// namespace pidNS (its inode number) and attaches the full walks. ownNS
// tells whether that is the caller's own namespace, the one in which the
// kernel reads the pid of a walk of one process. It fails where the
// kernel, its BTF or the caller's capabilities (CAP_BPF and CAP_PERFMON,
// or CAP_SYS_ADMIN) do not allow it.
func loadBPF(pidNS uint64, ownNS bool) (*bpfSweep, error) {
	spec, err := loadSweep()
	if err != nil {
		return nil, fmt.Errorf("load bpf sweep: %w", err)
	}
	ns := uint32(pidNS)
	if pidNS == initPIDNS {
		ns = 0 // task->pid and task->tgid as they are
	}
	if err := spec.Variables["pidns_inum"].Set(ns); err != nil {
		return nil, fmt.Errorf("load bpf sweep: %w", err)
	}
	b := &bpfSweep{holder: initialUserTime()}
	if err := spec.LoadAndAssign(&b.objs, nil); err != nil {
		return nil, fmt.Errorf("load bpf sweep: %w", err)
	}
	if b.all, err = link.AttachIter(link.IterOptions{Program: b.objs.Sweep}); err != nil {
		b.Close()
		return nil, fmt.Errorf("attach bpf sweep: %w", err)
	}
	if b.track, err = link.AttachIter(link.IterOptions{Program: b.objs.SweepTrack}); err != nil {
		b.Close()
		return nil, fmt.Errorf("attach bpf sweep: %w", err)
	}
	// A walk of our own process tells whether the kernel filters by pid
	// and proves that the program runs; where it cannot tell (no pid
	// filter, or pids of another namespace), a full walk proves it.
	if ownNS {
		if _, err := b.read(b.objs.Sweep, unix.Getpid(), nil); err == nil {
			b.pidFilter = true
			return b, nil
		} else if !errors.Is(err, unix.EINVAL) {
			b.Close()
			return nil, fmt.Errorf("run bpf sweep: %w", err)
		}
	}
	if _, err := b.read(b.objs.Sweep, 0, nil); err != nil {
		b.Close()
		return nil, fmt.Errorf("run bpf sweep: %w", err)
	}
	return b, nil
}

// acquire reserves the programs for one sweep; false once Close was called.
func (b *bpfSweep) acquire() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closing {
		return false
	}
	b.users++
	return true
}

// release ends a sweep's use, closing the programs if Close came meanwhile.
func (b *bpfSweep) release() {
	b.mu.Lock()
	b.users--
	last := b.closing && b.users == 0
	b.mu.Unlock()
	if last {
		b.close()
	}
}

// Close releases the programs and links now, or when the last sweep that
// uses them ends.
func (b *bpfSweep) Close() error {
	b.mu.Lock()
	b.closing = true
	idle := b.users == 0
	b.mu.Unlock()
	if idle {
		return b.close()
	}
	return nil
}

func (b *bpfSweep) close() error {
	if b.all != nil {
		b.all.Close()
	}
	if b.track != nil {
		b.track.Close()
	}
	return b.objs.Close()
}

// read runs one walk and appends its bytes to buf: the full walk of prog
// when pid is 0, else a walk of process pid only.
func (b *bpfSweep) read(prog *ebpf.Program, pid int, buf []byte) ([]byte, error) {
	if pid != 0 {
		fd, err := openPIDIter(prog, pid)
		if err != nil {
			return buf, err
		}
		defer unix.Close(fd)
		return readIter(buf, func(p []byte) (int, error) {
			return eintr.Retry(func() (int, error) { return unix.Read(fd, p) })
		})
	}
	it := b.all
	if prog == b.objs.SweepTrack {
		it = b.track
	}
	f, err := it.Open()
	if err != nil {
		return buf, err
	}
	defer f.Close()
	return readIter(buf, func(p []byte) (int, error) {
		n, err := f.Read(p)
		if err == io.EOF {
			err = nil
		}
		return n, err
	})
}

// readIter appends what an iterator's reads give to buf, until a read
// gives nothing.
func readIter(buf []byte, read func([]byte) (int, error)) ([]byte, error) {
	for {
		if cap(buf)-len(buf) < 64<<10 {
			buf = append(buf[:cap(buf)], make([]byte, max(64<<10, cap(buf)))...)[:len(buf)]
		}
		n, err := read(buf[len(buf):cap(buf)])
		if err != nil {
			return buf, fmt.Errorf("read bpf iterator: %w", err)
		}
		if n <= 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// openPIDIter makes a task_file iterator over process pid's threads only
// and returns its fd; the link it is made from is closed at once (the
// iterator holds its own reference). EINVAL means a kernel older than
// 6.1, which takes no pid.
func openPIDIter(prog *ebpf.Program, pid int) (int, error) {
	var info [16]byte // union bpf_iter_link_info: task {tid, pid, pid_fd}
	binary.LittleEndian.PutUint32(info[4:], uint32(pid))
	attr := struct {
		progFD, targetFD, attachType, flags uint32
		iterInfo                            uint64
		iterInfoLen                         uint32
		_                                   uint32
	}{
		progFD:      uint32(prog.FD()),
		attachType:  uint32(ebpf.AttachTraceIter),
		iterInfo:    uint64(uintptr(unsafe.Pointer(&info[0]))),
		iterInfoLen: uint32(len(info)),
	}
	lfd, _, errno := unix.Syscall(unix.SYS_BPF, bpfLinkCreate, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(&info)
	if errno != 0 {
		return -1, fmt.Errorf("bpf link create (pid %d): %w", pid, errno)
	}
	defer unix.Close(int(lfd))
	iattr := struct{ linkFD, flags uint32 }{linkFD: uint32(lfd)}
	ifd, _, errno := unix.Syscall(unix.SYS_BPF, bpfIterCreate, uintptr(unsafe.Pointer(&iattr)), unsafe.Sizeof(iattr))
	if errno != 0 {
		return -1, fmt.Errorf("bpf iter create (pid %d): %w", pid, errno)
	}
	return int(ifd), nil
}

// errBadRecord means the iterator's output does not parse: a program
// and a reader out of step, never expected.
var errBadRecord = errors.New("bad bpf sweep record")

// parseRecords decodes the iterator's output. Paths alias buf.
func parseRecords(buf []byte, fn func(*record)) error {
	le := binary.LittleEndian
	var r record
	for len(buf) > 0 {
		if len(buf) < heldSize {
			return fmt.Errorf("%w: %d trailing bytes", errBadRecord, len(buf))
		}
		r = record{
			kind: le.Uint16(buf[0:]),
			tgid: int(int32(le.Uint32(buf[4:]))),
			tid:  int(int32(le.Uint32(buf[8:]))),
			fd:   int(int32(le.Uint32(buf[12:]))),
		}
		n := int(le.Uint16(buf[2:]))
		fixed := heldSize
		switch r.kind {
		case recHeld:
		case recCandidate:
			fixed = recSize
			if len(buf) < fixed {
				return fmt.Errorf("%w: short candidate", errBadRecord)
			}
			r.flags = le.Uint32(buf[16:])
			r.mntID = int(int32(le.Uint32(buf[20:])))
			r.mode = le.Uint32(buf[24:])
			r.nlink = le.Uint32(buf[28:])
			r.dev = le.Uint64(buf[32:])
			r.ino = le.Uint64(buf[40:])
			r.size = int64(le.Uint64(buf[48:]))
			r.pos = int64(le.Uint64(buf[56:]))
			r.startBoot = le.Uint64(buf[64:])
			r.uid = le.Uint32(buf[72:])
			r.mntNS = uint64(le.Uint32(buf[76:]))
			comm := buf[80:96:96]
			if i := bytes.IndexByte(comm, 0); i >= 0 {
				comm = comm[:i]
			}
			r.comm = comm
		default:
			return fmt.Errorf("%w: kind %d", errBadRecord, r.kind)
		}
		if len(buf) < fixed+n {
			return fmt.Errorf("%w: path of %d bytes cut", errBadRecord, n)
		}
		if n > 0 {
			r.path = buf[fixed : fixed+n : fixed+n]
		}
		fn(&r)
		buf = buf[fixed+n:]
	}
	return nil
}

// kernelDev converts a kernel dev_t (MAJOR << 20 | MINOR, include/linux/kdev_t.h)
// to the st_dev encoding of stat(2).
func kernelDev(d uint64) uint64 { return unix.Mkdev(uint32(d>>20), uint32(d&(1<<20-1))) }

// maxPIDWalks is how many processes SweepPIDs walks one by one before
// the walks were timed (walkEach); beyond, one walk of every table,
// filtered here.
const maxPIDWalks = 64

// group is what the walk found of one process.
type group struct {
	pid  int
	recs []record
}

// sweepBPF is sweep through the kernel's iterator; pids nil means every
// process. Any failure of the iterator is returned, and the caller then
// sweeps /proc instead.
func (s *Scanner) sweepBPF(ctx context.Context, b *bpfSweep, rootfd int, pids []int) (Result, error) {
	start := time.Now()
	var track func([]byte) bool
	prog := b.objs.Sweep
	if t := s.track.Load(); t != nil {
		track = *t
		prog = b.objs.SweepTrack
	}
	bufp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bufp)
	buf := (*bufp)[:0]
	var want map[int]bool
	var err error
	var total Result
	walkStart := time.Now()
	switch {
	case pids == nil:
		buf, err = b.read(prog, 0, buf)
		b.timed(0, 0, time.Since(walkStart))
	case !b.walkEach(len(pids), s.workers):
		want = make(map[int]bool, len(pids))
		for _, pid := range pids {
			want[pid] = true
		}
		buf, err = b.read(prog, 0, buf)
		b.timed(0, 0, time.Since(walkStart))
	case len(pids) == 1:
		// One process, the event path's usual case: walked here, into
		// the pooled buffer, with no goroutine to start.
		if pid := pids[0]; pid != s.self && pid > 0 {
			buf, err = b.read(prog, pid, buf)
			if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) {
				buf, err = buf[:0], nil // gone: counted below
			}
			b.timed(1, 1, time.Since(walkStart))
		}
	default:
		// The processes' walks run in parallel, as the /proc sweep reads
		// processes in parallel: on the event path every millisecond
		// counts (a holder may exit right after its unlink). Each walker
		// appends to a pooled buffer of its own.
		errs := make([]error, len(pids))
		locals := make([]*[]byte, min(s.workers, len(pids)))
		var next atomic.Int64
		var wg sync.WaitGroup
		for k := range locals {
			lp := s.bufs.Get().(*[]byte)
			locals[k] = lp
			wg.Add(1)
			go func() {
				defer wg.Done()
				local := (*lp)[:0]
				for {
					i := int(next.Add(1) - 1)
					if i >= len(pids) {
						break
					}
					if pid := pids[i]; pid != s.self && pid > 0 {
						n := len(local)
						if local, errs[i] = b.read(prog, pid, local); errs[i] != nil {
							local = local[:n] // a failed walk's partial output
						}
					}
				}
				*lp = local
			}()
		}
		wg.Wait()
		for i := range pids {
			switch {
			case errors.Is(errs[i], unix.ESRCH) || errors.Is(errs[i], unix.ENOENT):
				// gone: counted below
			case errs[i] != nil:
				err = errs[i]
			}
		}
		b.timed(len(pids), len(locals), time.Since(walkStart))
		for _, lp := range locals {
			buf = append(buf, *lp...)
			s.bufs.Put(lp)
		}
	}
	*bufp = buf
	if err != nil {
		return Result{}, err
	}

	// Records come process by process, a process's threads (those whose
	// leader has exited) one after the other.
	var groups []*group
	byPID := make(map[int]*group)
	err = parseRecords(buf, func(r *record) {
		if r.tgid == s.self || (want != nil && !want[r.tgid]) {
			return
		}
		g := byPID[r.tgid]
		if g == nil {
			g = &group{pid: r.tgid}
			byPID[r.tgid] = g
			groups = append(groups, g)
		}
		g.recs = append(g.recs, *r)
		total.FDs++
	})
	if err != nil {
		return Result{}, err
	}
	if want == nil && pids != nil {
		// A walk of a process that has exited shows nothing, as does one
		// of a process with nothing to show: its /proc entry tells.
		for _, pid := range pids {
			if byPID[pid] == nil && pid != s.self && pid > 0 && gone(rootfd, pid) {
				total.Vanished++
				total.Gone = append(total.Gone, pid)
			}
		}
	}
	total.Procs = len(groups)

	total = fanOut(ctx, s, rootfd, groups, total, func(w *worker, g *group, res *Result) {
		w.processBPF(g, track, b.holder, res)
	})
	total.Duration = time.Since(start)
	s.log.Debug("sweep done", zap.String("backend", BackendBPF), zap.Int("procs", total.Procs), zap.Int("fds", total.FDs),
		zap.Int("candidates", len(total.Candidates)), zap.Int("vanished", total.Vanished),
		zap.Int("denied", total.Denied), zap.Duration("duration", total.Duration))
	if err := ctx.Err(); err != nil {
		return total, fmt.Errorf("sweep: %w", err)
	}
	return total, nil
}

// processBPF turns what the walk found of one process into candidates
// (and holder pairs), as process does from /proc.
func (w *worker) processBPF(g *group, track func([]byte) bool, holder bool, res *Result) {
	clear(w.held)
	pid := g.pid
	pidDir := strconv.Itoa(pid)
	// A leader that has exited leaves its table to the other threads,
	// each of which the walk reports: keep one, the thread the /proc
	// sweep would read (the first listed).
	tid := 0
	if g.recs[0].tid != pid {
		tid = procfs.LiveThreadAt(w.rootfd, pidDir, pid, w.dirent)
		if tid == 0 {
			res.Vanished++
			res.Gone = append(res.Gone, pid)
			return
		}
	}
	dir := pidDir
	if tid != 0 {
		dir = pidDir + "/task/" + strconv.Itoa(tid)
	}
	var found []Candidate
	var first *record // the first candidate's record, for the holder fields
	for i := range g.recs {
		r := &g.recs[i]
		if r.tid != pid && r.tid != tid {
			continue
		}
		link := r.path
		if link == nil {
			// bpf_d_path(3) refused (a name longer than its buffer):
			// the link text of that one descriptor says what it can.
			l, err := procfs.ReadlinkAt(w.rootfd, dir+"/fd/"+strconv.Itoa(r.fd), &w.link)
			if err != nil {
				w.countFDErr(err, res)
				continue
			}
			link = l
		}
		path, _ := trimDeleted(link)
		if track != nil && track(path) {
			w.hold(pid, r.fd, path, res)
		}
		if r.kind != recCandidate {
			continue
		}
		// The inode's fields come from stat(2) of the descriptor, as the
		// /proc sweep takes them: some filesystems report another st_dev
		// (btrfs subvolumes) or count delayed allocation in st_blocks
		// (ext4, XFS), which the inode itself does not show.
		n := strconv.Itoa(r.fd)
		st, err := w.statFD(dir, n, r.mntID)
		if err != nil {
			if errors.Is(err, fsguard.ErrUnresponsive) || errors.Is(err, fsguard.ErrTooManyStuck) {
				res.Unanswered = append(res.Unanswered, Unanswered{PID: pid, FD: r.fd, Path: bytes.Clone(path), MntID: r.mntID})
				continue
			}
			w.countFDErr(err, res)
			continue
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue // the number was given to another file since the walk
		}
		c := Candidate{
			PID: pid, TID: tid, FD: r.fd,
			Flags: r.flags, Pos: r.pos, MntID: r.mntID,
			Path:    bytes.Clone(path),
			TmpFile: r.flags&oTmpfile != 0,
		}
		c.setInode(&st)
		found = append(found, c)
		if first == nil {
			first = r
		}
	}
	if len(found) == 0 {
		return
	}
	if !holder {
		if err := w.holder(pidDir, found); err != nil {
			w.countErr(pid, "read holder", err, res)
			return
		}
		res.Candidates = append(res.Candidates, found...)
		return
	}
	// The walk read the holder's stat and status fields in the kernel:
	// only its executable's name is left to read.
	exe := "" // unreadable for exiting processes
	if link, err := procfs.ReadlinkAt(w.rootfd, pidDir+"/exe", &w.link); err == nil {
		exe = string(link)
	}
	r := first
	var mntNS uint64
	var cid string
	var other bool
	if r.mntNS != 0 {
		mntNS, cid, other = w.namespaceOf(dir, r.mntNS)
	} else {
		mntNS, cid, other = w.namespace(dir)
	}
	comm := string(r.comm)
	for i := range found {
		c := &found[i]
		c.StartTime = r.startBoot / nsPerTick
		c.Comm = comm
		c.Exe = exe
		c.UID = r.uid
		c.MntNS, c.ContainerID, c.OtherRoot = mntNS, cid, other
	}
	res.Candidates = append(res.Candidates, found...)
}

// nsPerTick converts the kernel's start time to clock ticks as proc(5)
// gives it (nsec_to_clock_t): USER_HZ is 100 on every architecture Go
// supports.
const nsPerTick = 1e9 / 100

// statFD stats the file open as dir/fd/name, under the guard when there
// is one (see confirm).
func (w *worker) statFD(dir, name string, mntID int) (unix.Stat_t, error) {
	g := w.s.guard
	if g == nil {
		return statAt(w.rootfd, dir+"/fd/"+name, 0)
	}
	path := w.s.root + "/" + dir + "/fd/" + name
	var st unix.Stat_t
	var serr error
	if err := g.Do(mntID, func() { st, serr = statAt(unix.AT_FDCWD, path, 0) }, nil); err != nil {
		return unix.Stat_t{}, err
	}
	return st, serr
}

// gone reports whether process pid has no entry below the proc root.
func gone(rootfd, pid int) bool {
	err := eintr.Retry0(func() error { return unix.Faccessat(rootfd, strconv.Itoa(pid), unix.F_OK, 0) })
	return errors.Is(err, unix.ENOENT)
}
