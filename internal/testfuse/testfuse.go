// Package testfuse mounts a small in-memory FUSE filesystem for tests and
// makes it stop answering on demand, the way a wedged FUSE server (which
// any user can mount) behaves. It speaks the protocol directly on
// /dev/fuse (fuse(4), include/uapi/linux/fuse.h): no libfuse, no cgo.
//
// The filesystem is a flat root directory of regular files. Its replies
// carry zero validity for names and attributes, so every path walk sends
// LOOKUP and every stat(2) sends GETATTR: a held request reaches whoever
// makes the call, including through /proc/PID/fd/N after the file was
// unlinked.
//
//	srv := testfuse.Mount(t, dir)
//	h := testproc.Start(t, testproc.Open(p, "rw"), testproc.Write(0, "x"), testproc.Unlink(p))
//	srv.Hang(testfuse.OpGetattr)
//	go stat(fmt.Sprintf("/proc/%d/fd/%d", h.PID, h.FDs[0])) // blocks
//	srv.WaitPending(t, 1)
//	srv.Resume() // or srv.Abort(): the stat fails with ECONNABORTED
//
// The test process may use package os on the mount: Mount first makes
// the kernel stop forwarding polls, which Go's runtime would otherwise
// send from a place where they can deadlock against the server in the
// same process (see Options.Poll). Page faults are the same kind of
// wait: do not mmap(2) a file of the mount in the test process.
package testfuse

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
)

// Options change how a Server behaves.
type Options struct {
	// DirectIO sets FOPEN_DIRECT_IO on every open: reads and writes
	// bypass the page cache, so every read(2) becomes a READ even when
	// the kernel still has the pages.
	DirectIO bool
	// Trace logs every request and its answer with t.Logf.
	Trace bool
	// Poll leaves the first poll of a file to reach the server as POLL
	// (answered ENOSYS, or held by Hang(OpPoll)), to test a client that
	// polls, or registers with epoll as every os.Open does. Without it,
	// Mount makes the kernel answer polls itself first (see primePoll):
	// with Poll set, the test process must not open files on the mount
	// with package os, or it can deadlock against its own server
	// (golang/go#21014); use golang.org/x/sys/unix or a subprocess.
	Poll bool
}

// Server is a mounted FUSE filesystem with a flat root directory of
// regular files held in memory. One goroutine reads requests from
// /dev/fuse and answers them at once from memory; a held request is only
// set aside, so it never stops the others.
type Server struct {
	t         testing.TB
	dir       string
	opt       Options
	fd        int           // the /dev/fuse connection
	dev       uint64        // st_dev of the mount
	abortPath string        // fusectl's abort file for this connection
	ctlMount  string        // a private fusectl mount to remove, or ""
	done      chan struct{} // closed when the serving goroutine returns
	abortOnce sync.Once
	hangOnce  sync.Once
	quiet     atomic.Bool // no more t.Logf: the test is over

	mu      sync.Mutex // guards the fields below
	fs      *fs
	hang    map[Op]bool
	held    []request
	changed chan struct{} // closed and replaced whenever held changes
	aborted bool
	minor   uint32  // the kernel's protocol minor, from INIT
	errs    []error // failures of the serving side, reported at cleanup
}

// request is a request set aside by Hang.
type request struct {
	h    inHeader
	body []byte
}

// Mount mounts an empty filesystem at dir (an existing directory) and
// serves it until the test ends. Cleanup aborts the connection (so every
// request still waiting, in the test process or in a holder, fails with
// ECONNABORTED, and one made afterwards with ENOTCONN), unmounts dir with MNT_DETACH and waits for the serving
// goroutine. It skips without root or /dev/fuse (fails in CI).
func Mount(t testing.TB, dir string) *Server {
	t.Helper()
	return MountWith(t, dir, Options{})
}

// MountWith is Mount with options.
func MountWith(t testing.TB, dir string, opt Options) *Server {
	t.Helper()
	testfs.RequireRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testfs.Skip(t, "needs /dev/fuse: "+err.Error())
	}
	// Made before the cleanup below is registered, so that it is removed
	// only after a private fusectl mount on it is gone.
	spare := t.TempDir()
	fd, err := openDevice()
	if err != nil {
		t.Fatal(err)
	}
	if err := mountFUSE(dir, fd); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	s := &Server{
		t:       t,
		dir:     dir,
		opt:     opt,
		fd:      fd,
		done:    make(chan struct{}),
		fs:      newFS(opt.DirectIO),
		hang:    map[Op]bool{},
		changed: make(chan struct{}),
	}
	// The kernel has queued INIT; nothing on the mount answers until the
	// server reads it, so serve before the first stat.
	go s.serve()
	t.Cleanup(s.close)
	name, dev, err := connName(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.dev = dev
	if s.abortPath, s.ctlMount, err = abortFile(name, spare); err != nil {
		t.Fatal(err)
	}
	if !opt.Poll {
		if err := primePoll(dir); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// Hang holds every later request with one of these opcodes unanswered,
// until Resume or Abort. FORGET, BATCH_FORGET and INTERRUPT expect no
// answer and are never held.
//
// The first Hang also registers an Abort as a cleanup of the test. It
// runs before the cleanups registered earlier, such as a holder's kill: a
// holder stuck on a held request waits uninterruptibly and would
// otherwise not die until the connection goes.
func (s *Server) Hang(ops ...Op) {
	s.hangOnce.Do(func() { s.t.Cleanup(s.Abort) })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, op := range ops {
		s.hang[op] = true
	}
}

// Resume stops holding requests and answers the held ones now, from the
// filesystem as it is at this moment.
func (s *Server) Resume() {
	s.mu.Lock()
	clear(s.hang)
	held := s.held
	s.held = nil
	s.signal()
	var replies [][]byte
	for _, r := range held {
		replies = append(replies, s.answer(r.h, r.body))
	}
	s.mu.Unlock()
	for _, msg := range replies {
		s.send(msg)
	}
}

// Abort aborts the connection through fusectl, as cleanup does: every
// request waiting for an answer, held or not, fails with ECONNABORTED,
// and every later call on the mount with ENOTCONN. It is safe to call
// more than once.
func (s *Server) Abort() {
	s.abortOnce.Do(func() {
		s.mu.Lock()
		s.aborted = true
		s.held = nil
		s.signal()
		s.mu.Unlock()
		if s.abortPath == "" {
			return // Mount failed before it found fusectl
		}
		if err := abortConn(s.abortPath); err != nil {
			s.t.Errorf("testfuse: abort %s: %v", s.dir, err)
		}
	})
}

// Pending returns how many requests are being held unanswered.
func (s *Server) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
}

// WaitPending waits until at least n requests are held, and fails t
// after 10 seconds.
func (s *Server) WaitPending(t testing.TB, n int) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		got, changed := len(s.held), s.changed
		s.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("testfuse: %d requests held after 10s, want %d", got, n)
		}
	}
}

// KernelMinor returns the protocol minor version the kernel offered in
// INIT (the server answers with the lower of it and 38), or 0 before INIT.
func (s *Server) KernelMinor() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.minor
}

// signal wakes WaitPending. s.mu must be held.
func (s *Server) signal() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// fail records a failure of the serving side, reported at cleanup.
func (s *Server) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, err)
}

func (s *Server) trace(format string, args ...any) {
	if s.opt.Trace && !s.quiet.Load() {
		s.t.Logf("testfuse: "+format, args...)
	}
}

// serve reads and answers requests until the connection ends.
func (s *Server) serve() {
	defer close(s.done)
	buf := make([]byte, readBufSize)
	for {
		n, err := readRequest(s.fd, buf)
		switch {
		case err == nil:
			s.dispatch(buf[:n])
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.ENOENT):
			// ENOENT: the request was interrupted and ended while it
			// was being copied to us (fuse_dev_do_read); take the next.
		case isGone(err):
			return
		default:
			s.fail(fmt.Errorf("read /dev/fuse: %w", err))
			return
		}
	}
}

// dispatch answers one request, or holds it.
func (s *Server) dispatch(msg []byte) {
	var h inHeader
	body, err := decode(msg, &h)
	if err != nil || int(h.Len) != len(msg) {
		s.fail(fmt.Errorf("bad request of %d bytes (header len %d): %v", len(msg), h.Len, err))
		return
	}
	op := Op(h.Opcode)
	s.mu.Lock()
	if s.aborted {
		s.mu.Unlock()
		return
	}
	if s.hang[op] && !op.noReply() {
		s.held = append(s.held, request{h: h, body: slices.Clone(body)})
		s.signal()
		s.mu.Unlock()
		s.trace("%s unique=%d node=%d pid=%d: held", op, h.Unique, h.NodeID, h.PID)
		return
	}
	reply := s.answer(h, body)
	s.mu.Unlock()
	s.send(reply)
}

// answer returns the reply to a request, nil for those that take none.
// s.mu must be held.
func (s *Server) answer(h inHeader, body []byte) []byte {
	op := Op(h.Opcode)
	switch {
	case op == OpInit:
		return s.init(h, body)
	case op == OpInterrupt:
		// The caller got a signal while waiting. Go's runtime sends
		// SIGURG often, so ignore it and answer the request as usual: the
		// caller then keeps waiting until a fatal signal (fuse(4),
		// "Interrupting filesystem operations").
		s.trace("%s unique=%d: ignored", op, h.Unique)
		return nil
	case op.noReply():
		return nil
	}
	payload, errno := s.fs.handle(h, body)
	s.trace("%s unique=%d node=%d pid=%d: %d bytes, errno %d (%v)", op, h.Unique, h.NodeID, h.PID, len(payload), errno, errno)
	return reply(h.Unique, errno, payload)
}

// init answers INIT: the lower of the two minor versions, big writes,
// max_write 128 KiB, nanosecond timestamps; nothing else is asked for
// (no async reads, no writeback cache, no readdirplus, no atomic
// O_TRUNC: truncation comes as SETATTR).
func (s *Server) init(h inHeader, body []byte) []byte {
	var in initIn
	if _, err := decode(body, &in); err != nil || in.Major != protoMajor {
		s.fail(fmt.Errorf("INIT: kernel protocol %d.%d: %v", in.Major, in.Minor, err))
		return reply(h.Unique, unix.EPROTO, nil)
	}
	s.minor = in.Minor
	out := initOut{
		Major:        protoMajor,
		Minor:        min(in.Minor, protoMinor),
		MaxReadahead: min(in.MaxReadahead, maxWrite),
		Flags:        in.Flags & initBigWrites,
		MaxWrite:     maxWrite,
		TimeGran:     1,
	}
	s.trace("INIT kernel %d.%d flags %#x: answered %d.%d flags %#x", in.Major, in.Minor, in.Flags, out.Major, out.Minor, out.Flags)
	return reply(h.Unique, 0, encode(nil, out))
}

// reply builds a reply: an error carries no payload (the kernel refuses
// one with EINVAL).
func reply(unique uint64, errno unix.Errno, payload []byte) []byte {
	if errno != 0 {
		payload = nil
	}
	msg := encode(make([]byte, 0, 16+len(payload)), outHeader{Len: uint32(16 + len(payload)), Error: -int32(errno), Unique: unique})
	return append(msg, payload...)
}

// send writes a reply. ENOENT means the request is gone (its caller was
// killed before we read it, or the connection was aborted meanwhile).
func (s *Server) send(msg []byte) {
	if msg == nil {
		return
	}
	err := writeReply(s.fd, msg)
	if err != nil && !errors.Is(err, unix.ENOENT) && !isGone(err) {
		s.fail(fmt.Errorf("write reply: %w", err))
	}
}

// close is the test's cleanup.
func (s *Server) close() {
	s.Abort()
	if err := detach(s.dir); err != nil {
		s.t.Errorf("testfuse: %v", err)
	}
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.t.Errorf("testfuse: serving goroutine for %s did not stop", s.dir)
	}
	s.quiet.Store(true)
	unix.Close(s.fd)
	if s.ctlMount != "" {
		if err := detach(s.ctlMount); err != nil {
			s.t.Errorf("testfuse: %v", err)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(s.dir, &st); err != nil || st.Dev == s.dev {
		s.t.Errorf("testfuse: %s still mounted after unmount (stat: %v)", s.dir, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, err := range s.errs {
		s.t.Errorf("testfuse: %s: %v", s.dir, err)
	}
}
