package daemon

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
)

// mountChanges tells when the mount table of a watched view's namespace
// changes. A container's namespace is often seen before its runtime has
// finished mounting in it (its root, pivot_root, its volumes): the view's
// trees, walked then, are the host's directories under a second name, and
// the container's own, mounted a moment later, would stay unwatched.
// proc(5): /proc/PID/mountinfo is pollable, and poll(2) reports POLLPRI
// once after each mount or unmount in that namespace; the open file keeps
// the namespace, not the process.
type mountChanges struct {
	procRoot string
	epfd     int
	wake     int // an eventfd in the epoll set: written when run must return

	mu     sync.Mutex
	byNS   map[string]int // namespace -> its open mountinfo
	byFD   map[int]string
	closed bool // close was called: a full pass still running at shutdown may sync
}

func newMountChanges(procRoot string) (*mountChanges, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	// run waits without a timeout, so an idle daemon is not woken for
	// nothing; this is how it is told to return.
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	return &mountChanges{procRoot: procRoot, epfd: epfd, wake: wake, byNS: make(map[string]int), byFD: make(map[int]string)}, nil
}

// sync follows the namespaces in reps (namespace -> a pid in it) and stops
// following the others. A process gone before its file was opened is
// skipped: its namespace is looked at again with its next representative.
func (m *mountChanges) sync(reps map[string]int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	for ns, fd := range m.byNS {
		if _, ok := reps[ns]; !ok {
			_ = unix.EpollCtl(m.epfd, unix.EPOLL_CTL_DEL, fd, nil)
			unix.Close(fd)
			delete(m.byNS, ns)
			delete(m.byFD, fd)
		}
	}
	for ns, pid := range reps {
		if _, ok := m.byNS[ns]; ok {
			continue
		}
		fd, err := eintr.Retry(func() (int, error) {
			return unix.Open(m.procRoot+"/"+strconv.Itoa(pid)+"/mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		})
		if err != nil {
			continue
		}
		ev := unix.EpollEvent{Events: unix.EPOLLPRI, Fd: int32(fd)}
		if err := unix.EpollCtl(m.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			unix.Close(fd)
			continue
		}
		m.byNS[ns], m.byFD[fd] = fd, ns
	}
}

// run calls changed with the namespaces whose mounts changed, until ctx
// ends. A runtime setting up a container mounts a dozen times in a few
// milliseconds: a namespace is reported settle after its first change,
// with the changes that came meanwhile. Any user who can make a mount
// namespace can also mount and unmount in it in a loop, and each report
// walks that view's trees: a namespace is reported at most once per gap.
func (m *mountChanges) run(ctx context.Context, settle, gap time.Duration, changed func(ns []string)) {
	stop := context.AfterFunc(ctx, func() {
		_, _ = unix.Write(m.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	})
	defer stop()
	events := make([]unix.EpollEvent, 32)
	dirty := make(map[string]time.Time) // namespace -> when it is due
	last := make(map[string]time.Time)  // namespace -> its last report
	for ctx.Err() == nil {
		timeout := -1 // nothing due: wait for a change or the wake
		now := time.Now()
		for _, due := range dirty {
			ms := int(max(due.Sub(now), time.Millisecond).Milliseconds())
			if timeout < 0 || ms < timeout {
				timeout = ms
			}
		}
		n, err := unix.EpollWait(m.epfd, events, timeout)
		now = time.Now()
		if err == nil && n > 0 {
			for _, ns := range m.namespaces(events[:n]) {
				if _, ok := dirty[ns]; !ok {
					dirty[ns] = now.Add(settle)
					if at, ok := last[ns]; ok && at.Add(gap).After(dirty[ns]) {
						dirty[ns] = at.Add(gap)
					}
				}
			}
		}
		var ready []string
		for ns, due := range dirty {
			if !due.After(now) {
				ready = append(ready, ns)
				delete(dirty, ns)
				last[ns] = now
			}
		}
		for ns, at := range last {
			if now.Sub(at) > gap {
				delete(last, ns)
			}
		}
		if len(ready) > 0 {
			changed(ready)
		}
	}
}

// namespaces returns the namespaces of events' files.
func (m *mountChanges) namespaces(events []unix.EpollEvent) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, ev := range events {
		if ns, ok := m.byFD[int(ev.Fd)]; ok {
			out = append(out, ns)
		}
	}
	return out
}

// close stops following every namespace.
func (m *mountChanges) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	for fd := range m.byFD {
		unix.Close(fd)
	}
	clear(m.byFD)
	clear(m.byNS)
	unix.Close(m.epfd)
	unix.Close(m.wake)
}
