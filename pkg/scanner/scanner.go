package scanner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/fsguard"
	"github.com/relinkd/relinkd/internal/procfs"
)

// oTmpfile is __O_TMPFILE as it shows in fdinfo flags: open(2) keeps it
// in f_flags, so an O_TMPFILE descriptor can be told from an unlinked one.
const oTmpfile = 0o20000000

// Options configure a Scanner.
type Options struct {
	// ProcRoot is where procfs is mounted; "" means /proc.
	ProcRoot string
	// Workers bounds how many processes are read at once; 0 picks
	// twice GOMAXPROCS, at most 16.
	Workers int
	// Guard, when set, bounds the calls that ask a file's filesystem
	// (the stat that confirms a deletion): a filesystem that does not
	// answer leaves its descriptors in Result.Unanswered instead of
	// stalling the sweep.
	Guard *fsguard.Guard
	// Backend is how sweeps find the files: BackendProc ("" too) reads
	// /proc/PID/fd, BackendBPF walks the descriptor tables in the kernel
	// (an eBPF iterator), BackendAuto takes BPF where the kernel, its BTF
	// and the process's capabilities allow it and ProcRoot is this pid
	// namespace's /proc. BPF that cannot be loaded, or that fails during
	// a sweep, falls back to /proc with a warning: no sweep is lost.
	Backend string
}

// Backends (scan.backend).
const (
	BackendAuto = "auto"
	BackendProc = "proc"
	BackendBPF  = "bpf"
)

// Scanner sweeps /proc for deleted-but-open regular files.
type Scanner struct {
	root    string
	workers int
	self    int
	guard   *fsguard.Guard
	track   atomic.Pointer[func(path []byte) bool]
	log     *zap.Logger
	host    func() hostNS            // the host's mount namespace, read once
	bpf     atomic.Pointer[bpfSweep] // nil: the /proc backend
	why     string                   // why this backend (Backend)
	bufs    sync.Pool                // *[]byte: the BPF iterator's output
	idle    sync.Pool                // *worker: their buffers, reused across sweeps
	failed  atomic.Bool              // a BPF sweep failed since the last warning
}

// Track makes every sweep list in Result.Held which process holds a file
// (live or deleted) in which directory, for the paths keep accepts: the
// daemon's holder index, so that an unlink leads straight to the processes
// that held files in that directory, however old. nil stops it. The link
// text is read for every descriptor anyway; this adds no system call.
func (s *Scanner) Track(keep func(path []byte) bool) {
	if keep == nil {
		s.track.Store(nil)
		return
	}
	s.track.Store(&keep)
}

// New returns a Scanner. It touches nothing until Sweep.
func New(opts Options, log *zap.Logger) *Scanner {
	if opts.ProcRoot == "" {
		opts.ProcRoot = "/proc"
	}
	if opts.Workers <= 0 {
		opts.Workers = min(2*runtime.GOMAXPROCS(0), 16)
	}
	if log == nil {
		log = zap.NewNop()
	}
	s := &Scanner{root: opts.ProcRoot, workers: opts.Workers, self: os.Getpid(), guard: opts.Guard, log: log}
	s.host = sync.OnceValue(func() hostNS { return findHostNS(procfs.New(s.root)) })
	s.bufs.New = func() any { b := make([]byte, 0, 256<<10); return &b }
	s.pickBackend(opts.Backend)
	return s
}

// hostNS is the host's mount namespace and root directory, to tell a
// holder in a container from one in the host's namespace.
type hostNS struct {
	mntNS    uint64 // 0 when unknown: then no holder is taken for a container's
	dev, ino uint64 // the host's root directory
}

// findHostNS reads the mount namespace and root of PID 1, the host's, or
// where PID 1 may not be inspected (hidepid, a sandbox) the scanner's own.
func findHostNS(proc procfs.FS) hostNS {
	for _, pid := range []string{"1", "self"} {
		link, err := proc.MountNS(pid)
		if err != nil {
			continue
		}
		n, err := procfs.ParseNSLink([]byte(link))
		if err != nil {
			continue
		}
		h := hostNS{mntNS: n}
		if st, err := rootStat(unix.AT_FDCWD, proc.Path(pid+"/root")); err == nil {
			h.dev, h.ino = st.dev, st.ino
		}
		return h
	}
	return hostNS{}
}

// Sweep examines every process once and returns a candidate for each
// descriptor that refers to a deleted regular file, sorted by pid and fd.
// It fails only when the proc root itself cannot be read; processes that
// vanish or may not be inspected are counted in the Result.
func (s *Scanner) Sweep(ctx context.Context) (Result, error) {
	return s.atRoot(func(rootfd int) (Result, error) { return s.sweepWith(ctx, rootfd, nil, nil) })
}

// atRoot runs fn with the proc root open: every sweep reads below it.
func (s *Scanner) atRoot(fn func(rootfd int) (Result, error)) (Result, error) {
	rootfd, err := procfs.OpenDirAt(unix.AT_FDCWD, s.root)
	if err != nil {
		return Result{}, fmt.Errorf("open proc root %s: %w", s.root, err)
	}
	defer unix.Close(rootfd)
	return fn(rootfd)
}

// SweepPIDs is Sweep restricted to the given processes; the daemon uses it
// to look first at the processes most likely to hold a file just deleted.
func (s *Scanner) SweepPIDs(ctx context.Context, pids []int) (Result, error) {
	if pids == nil {
		pids = []int{}
	}
	return s.atRoot(func(rootfd int) (Result, error) { return s.sweepWith(ctx, rootfd, pids, pids) })
}

// SweepFDs reads only the given descriptors of the given processes, in
// /proc whatever the backend: the daemon's first look after an unlink,
// at the descriptors the holder index saw in that directory. A few
// readlinks, where a process's whole table can be hundreds. Descriptors
// closed since are skipped; nothing is tracked (Result.Held is empty).
func (s *Scanner) SweepFDs(ctx context.Context, targets []Target) (Result, error) {
	return s.atRoot(func(rootfd int) (Result, error) {
		start := time.Now()
		total := fanOut(ctx, s, rootfd, targets, Result{}, func(w *worker, t Target, res *Result) {
			if t.PID != s.self && t.PID > 0 && len(t.FDs) > 0 {
				w.process(t.PID, t.FDs, res)
			}
		})
		total.Duration = time.Since(start)
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("sweep: %w", err)
		}
		return total, nil
	})
}

// sweepWith sweeps through the backend: BPF when it is loaded (only, for
// SweepPIDs, the processes in only), else, or when BPF fails, /proc
// (the processes in pids).
func (s *Scanner) sweepWith(ctx context.Context, rootfd int, pids, only []int) (Result, error) {
	if b := s.bpf.Load(); b != nil && b.acquire() {
		res, err := s.sweepBPF(ctx, b, rootfd, only)
		b.release()
		if err == nil {
			s.failed.Store(false)
			return res, nil
		}
		if ctx.Err() != nil {
			return res, err
		}
		s.warnBPF(err)
	}
	if pids == nil {
		var err error
		if pids, err = procfs.IDsAt(rootfd, make([]byte, 32<<10)); err != nil {
			return Result{}, fmt.Errorf("list proc root %s: %w", s.root, err)
		}
	}
	return s.sweep(ctx, rootfd, pids)
}

func (s *Scanner) sweep(ctx context.Context, rootfd int, pids []int) (Result, error) {
	start := time.Now()
	total := fanOut(ctx, s, rootfd, pids, Result{}, func(w *worker, pid int, res *Result) {
		if pid != s.self { // the daemon's own pins are not candidates
			w.process(pid, nil, res)
		}
	})
	total.Duration = time.Since(start)
	s.log.Debug("sweep done", zap.Int("procs", total.Procs), zap.Int("fds", total.FDs),
		zap.Int("candidates", len(total.Candidates)), zap.Int("vanished", total.Vanished),
		zap.Int("denied", total.Denied), zap.Duration("duration", total.Duration))
	if err := ctx.Err(); err != nil {
		return total, fmt.Errorf("sweep: %w", err)
	}
	return total, nil
}

func sortCandidates(cs []Candidate) {
	slices.SortFunc(cs, func(a, b Candidate) int {
		if a.PID != b.PID {
			return a.PID - b.PID
		}
		return a.FD - b.FD
	})
}

// worker holds one goroutine's buffers, reused across processes.
type worker struct {
	s      *Scanner
	rootfd int
	dirent []byte
	link   []byte
	file   []byte
	held   map[string]int // directories the current process holds files in (Track): index in Result.Held
}

// hold notes that pid holds a file at path (Track) as descriptor fd, once
// per directory with the descriptors there.
func (w *worker) hold(pid, fd int, path []byte, res *Result) {
	i := bytes.LastIndexByte(path, '/')
	if i < 0 {
		return
	}
	dir := path[:max(i, 1)]
	if w.held == nil {
		w.held = make(map[string]int)
	}
	if k, ok := w.held[string(dir)]; ok {
		res.Held[k].FDs = append(res.Held[k].FDs, int32(fd))
		return
	}
	h := Held{PID: pid, Dir: string(dir), FDs: []int32{int32(fd)}}
	w.held[h.Dir] = len(res.Held)
	res.Held = append(res.Held, h)
}

func newWorker(s *Scanner, rootfd int) *worker {
	return &worker{
		s: s, rootfd: rootfd,
		dirent: make([]byte, 16<<10),
		link:   make([]byte, unix.PathMax+len(deletedSuffix)+1),
		file:   make([]byte, 4<<10),
	}
}

// getWorker takes a worker from the pool: on the event path a targeted
// sweep of a few processes would otherwise spend more on its buffers
// than on its system calls.
func (s *Scanner) getWorker(rootfd int) *worker {
	if w, ok := s.idle.Get().(*worker); ok {
		w.rootfd = rootfd
		return w
	}
	return newWorker(s, rootfd)
}

func (s *Scanner) putWorker(w *worker) {
	w.rootfd = -1
	s.idle.Put(w)
}

// process reads the descriptors of one process into res: all of them, or
// with fds non-nil those only.
func (w *worker) process(pid int, fds []int32, res *Result) {
	clear(w.held)
	pidDir := strconv.Itoa(pid)
	found, nfds, err := w.descriptors(pid, pidDir, fds, res)
	if err == nil && nfds == 0 {
		// An empty table: a kernel thread, or a leader that has exited
		// while other threads live on with the table (pthread_exit from
		// main). Those threads still show it under task/TID.
		if tid := procfs.LiveThreadAt(w.rootfd, pidDir, pid, w.dirent); tid != 0 {
			found, _, err = w.descriptors(pid, pidDir+"/task/"+strconv.Itoa(tid), fds, res)
			for i := range found {
				found[i].TID = tid
			}
		}
	}
	if err != nil {
		w.countErr(pid, "read fd dir", err, res)
		return
	}
	res.Procs++
	if len(found) == 0 {
		return
	}
	if err := w.holder(pidDir, found); err != nil {
		w.countErr(pid, "read holder", err, res)
		return
	}
	res.Candidates = append(res.Candidates, found...)
}

// descriptors reads the descriptor table in dir (below the proc root), or
// with fds non-nil those descriptors of it, and returns the deleted
// regular files in it and how many descriptors it saw. Only a whole
// table's paths are tracked: a part of it would tell the holder index
// that the rest was closed.
func (w *worker) descriptors(pid int, dir string, fds []int32, res *Result) ([]Candidate, int, error) {
	// A whole table is read through its directory; a few descriptors by
	// their paths below the proc root, which saves opening directories
	// for one or two reads.
	fdDir, fdPrefix := w.rootfd, dir+"/fd/"
	if fds == nil {
		var err error
		if fdDir, err = procfs.OpenDirAt(w.rootfd, dir+"/fd"); err != nil {
			return nil, 0, err
		}
		defer unix.Close(fdDir)
		fdPrefix = ""
	}
	nfds := 0

	var found []Candidate
	fdinfoDir := -1
	defer func() {
		if fdinfoDir >= 0 {
			unix.Close(fdinfoDir)
		}
	}()
	var mounts map[int]bool
	var track func([]byte) bool
	if t := w.s.track.Load(); t != nil && fds == nil {
		track = *t
	}
	each := func(fn func(name []byte)) error { return procfs.EachDirent(fdDir, w.dirent, fn) }
	if fds != nil {
		each = func(fn func(name []byte)) error {
			var num [12]byte
			for _, fd := range fds {
				fn(strconv.AppendInt(num[:0], int64(fd), 10))
			}
			return nil
		}
	}
	// Reading fd links needs ptrace-read access (proc(5)); when it is
	// refused for one descriptor it is refused for all of the process,
	// which is then counted once as not inspectable.
	var refused error
	err := each(func(name []byte) {
		fd, ok := procfs.ParseID(name)
		if !ok || refused != nil {
			return
		}
		n := string(name)
		link, err := procfs.ReadlinkAt(fdDir, fdPrefix+n, &w.link)
		if fds != nil && errors.Is(err, unix.ENOENT) {
			return // closed since it was listed: not a descriptor seen
		}
		nfds++
		res.FDs++
		if err != nil {
			if denied(err) {
				refused = err
				return
			}
			w.countFDErr(err, res)
			return
		}
		path, deleted := trimDeleted(link)
		if track != nil && track(path) {
			w.hold(pid, fd, path, res)
		}
		if !deleted {
			return
		}
		// fdinfo first: reading it asks nothing of the file's
		// filesystem, and its mnt_id says which filesystem the stat
		// below will ask.
		infoDir, infoName := fdinfoDir, n
		switch {
		case fds != nil:
			infoDir, infoName = w.rootfd, dir+"/fdinfo/"+n
		case fdinfoDir < 0:
			if fdinfoDir, err = procfs.OpenDirAt(w.rootfd, dir+"/fdinfo"); err != nil {
				w.countFDErr(err, res)
				return
			}
			infoDir = fdinfoDir
		}
		raw, err := procfs.ReadFileAt(infoDir, infoName, &w.file)
		if err != nil {
			w.countFDErr(err, res)
			return
		}
		info, err := procfs.ParseFDInfo(raw)
		if err != nil {
			w.s.log.Debug("skip descriptor", zap.Int("pid", pid), zap.Int("fd", fd), zap.Error(err))
			return
		}
		// The suffix is only a hint: confirm on the inode itself.
		st, live, err := w.confirm(dir, n, link, info.MntID)
		if err != nil {
			if errors.Is(err, fsguard.ErrUnresponsive) || errors.Is(err, fsguard.ErrTooManyStuck) {
				res.Unanswered = append(res.Unanswered, Unanswered{PID: pid, FD: fd, Path: bytes.Clone(path), MntID: info.MntID})
				return
			}
			w.countFDErr(err, res)
			return
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG || live {
			return // not a regular file, or a live file literally named "… (deleted)"
		}
		if onInternalMount(path) {
			// memfd_create(2) and memfd_secret(2) files live on the
			// kernel's internal mounts, which no mountinfo lists (and
			// secretmem cannot even be opened through /proc); a real
			// file named "/secretmem" or under "/memfd:x" is on a
			// listed mount.
			if mounts == nil {
				mounts = w.mountIDs(dir)
			}
			if !mounts[info.MntID] {
				return
			}
		}
		c := Candidate{
			PID: pid, FD: fd,
			Flags: info.Flags, Pos: info.Pos, MntID: info.MntID,
			Path:    bytes.Clone(path),
			TmpFile: info.Flags&oTmpfile != 0,
		}
		c.setInode(&st)
		found = append(found, c)
	})
	if err == nil && refused != nil {
		err = refused
	}
	return found, nfds, err
}

// confirm stats the file open as dir/fd/name and tells whether link, its
// link text, still names it in the holder's root. Both ask the file's
// filesystem (getattr, lookup), which may not answer: with a guard they
// run under it, keyed by the file's mount, and by absolute path, since
// the caller's directory descriptors may be closed before a stuck call
// returns.
func (w *worker) confirm(dir, name string, link []byte, mntID int) (st unix.Stat_t, live bool, err error) {
	g := w.s.guard
	if g == nil {
		st, err = statAt(w.rootfd, dir+"/fd/"+name, 0)
		live = err == nil && st.Nlink > 0 && liveName(w.rootfd, dir+"/root", link, &st)
		return st, live, err
	}
	base, link := w.s.root+"/"+dir, bytes.Clone(link)
	var gst unix.Stat_t
	var glive bool
	var gerr error
	if err := g.Do(mntID, func() {
		gst, gerr = statAt(unix.AT_FDCWD, base+"/fd/"+name, 0)
		glive = gerr == nil && gst.Nlink > 0 && liveName(unix.AT_FDCWD, base+"/root", link, &gst)
	}, nil); err != nil {
		return st, false, err
	}
	return gst, glive, gerr
}

// holder fills in the holder's identity on the candidates of pid. It reads
// the pseudo-files with the worker's buffers, relative to the open proc
// root: on the daemon's event path this runs within milliseconds of an
// unlink, so it avoids per-call allocation and path walks from "/".
func (w *worker) holder(pidDir string, cs []Candidate) error {
	raw, err := procfs.ReadFileAt(w.rootfd, pidDir+"/stat", &w.file)
	if err != nil {
		return err
	}
	stat, err := procfs.ParseStat(raw)
	if err != nil {
		return err
	}
	raw, err = procfs.ReadFileAt(w.rootfd, pidDir+"/status", &w.file)
	if err != nil {
		return err
	}
	uid, err := procfs.ParseStatusUID(raw)
	if err != nil {
		return err
	}
	exe := "" // unreadable for kernel threads and exiting processes
	if link, err := procfs.ReadlinkAt(w.rootfd, pidDir+"/exe", &w.link); err == nil {
		exe = string(link)
	}
	mntNS, cid, other := w.namespace(cs[0].ProcDir())
	for i := range cs {
		cs[i].StartTime = stat.StartTime
		cs[i].Comm = stat.Comm
		cs[i].Exe = exe
		cs[i].UID = uid
		cs[i].MntNS, cs[i].ContainerID, cs[i].OtherRoot = mntNS, cid, other
	}
	return nil
}

// namespace tells whether the holder whose directory below the proc root
// is dir runs in another mount namespace than the host's, and then which
// one, the container its cgroup names and whether its root is its own.
// It runs for holders of candidates only, and costs a host holder one
// readlink; a holder that cannot be asked is taken for the host's.
func (w *worker) namespace(dir string) (mntNS uint64, containerID string, otherRoot bool) {
	host := w.s.host()
	if host.mntNS == 0 {
		return 0, "", false
	}
	link, err := procfs.ReadlinkAt(w.rootfd, dir+"/ns/mnt", &w.link)
	if err != nil {
		return 0, "", false
	}
	n, err := procfs.ParseNSLink(link)
	if err != nil {
		return 0, "", false
	}
	return w.namespaceOf(dir, n)
}

// namespaceOf is namespace for a holder whose mount namespace is known
// to be n.
func (w *worker) namespaceOf(dir string, n uint64) (mntNS uint64, containerID string, otherRoot bool) {
	host := w.s.host()
	if host.mntNS == 0 || n == host.mntNS {
		return 0, "", false
	}
	if raw, err := procfs.ReadFileAt(w.rootfd, dir+"/cgroup", &w.file); err == nil {
		containerID = parseContainerID(raw)
	}
	if st, err := rootStat(w.rootfd, dir+"/root"); err == nil {
		otherRoot = host.dev != 0 && (st.dev != host.dev || st.ino != host.ino)
	}
	return n, containerID, otherRoot
}

// liveName reports whether link, read verbatim, names the inode st in the
// holder's root (root, relative to dirfd: PROC/PID/root): then the file was
// never deleted, it is merely called "x (deleted)". A deleted name whose
// inode has another link fails this.
func liveName(dirfd int, root string, link []byte, st *unix.Stat_t) bool {
	cur, err := statAt(dirfd, root+string(link), unix.AT_SYMLINK_NOFOLLOW)
	return err == nil && cur.Dev == st.Dev && cur.Ino == st.Ino
}

// setInode sets c's inode fields from st, the stat(2) of its open file.
// c.TmpFile must be set already.
func (c *Candidate) setInode(st *unix.Stat_t) {
	c.Dev, c.Ino, c.Nlink, c.Size, c.Blocks = st.Dev, st.Ino, uint64(st.Nlink), st.Size, st.Blocks
	c.Mode = fileMode(st.Mode)
	c.Owner, c.Group = st.Uid, st.Gid
	c.Linkable = st.Nlink > 0 || c.TmpFile
}

func (w *worker) mountIDs(dir string) map[int]bool {
	raw, err := procfs.ReadFileAt(w.rootfd, dir+"/mountinfo", &w.file)
	if err != nil {
		return map[int]bool{}
	}
	return procfs.MountIDs(raw)
}

// countErr records why a whole process could not be read. A process that
// exits mid-sweep is normal; anything else is counted as not inspectable.
func (w *worker) countErr(pid int, op string, err error, res *Result) {
	if vanished(err) || os.IsNotExist(err) {
		res.Vanished++
		res.Gone = append(res.Gone, pid)
		return
	}
	res.Denied++
	w.s.log.Debug("cannot inspect process", zap.Int("pid", pid), zap.String("op", op), zap.Error(err))
}

func (w *worker) countFDErr(err error, res *Result) {
	if vanished(err) {
		res.Vanished++
		return
	}
	if denied(err) {
		res.Denied++
	}
}

// fileMode converts st_mode to an fs.FileMode (type bits and permissions).
func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode // regular files only reach here
}

// fanOut runs do on every item across the scanner's workers (each with
// worker state of its own, reading below rootfd) until ctx ends, and
// returns total with what they found added, candidates sorted.
func fanOut[T any](ctx context.Context, s *Scanner, rootfd int, items []T, total Result, do func(w *worker, item T, res *Result)) Result {
	if len(items) == 1 {
		// One process (the event path's usual case): no goroutine to
		// start and wait for.
		w := s.getWorker(rootfd)
		var res Result
		do(w, items[0], &res)
		s.putWorker(w)
		return merge(total, []Result{res})
	}
	work := make(chan T)
	results := make([]Result, min(s.workers, max(len(items), 1)))
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func(res *Result) {
			defer wg.Done()
			w := s.getWorker(rootfd)
			defer s.putWorker(w)
			for it := range work {
				do(w, it, res)
			}
		}(&results[i])
	}
feed:
	for _, it := range items {
		select {
		case work <- it:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	return merge(total, results)
}

// merge adds the workers' results to total, candidates sorted.
func merge(total Result, results []Result) Result {
	for _, r := range results {
		total.Candidates = append(total.Candidates, r.Candidates...)
		total.Procs += r.Procs
		total.FDs += r.FDs
		total.Vanished += r.Vanished
		total.Gone = append(total.Gone, r.Gone...)
		total.Denied += r.Denied
		total.Unanswered = append(total.Unanswered, r.Unanswered...)
		total.Held = append(total.Held, r.Held...)
	}
	sortCandidates(total.Candidates)
	return total
}
