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

	mu   sync.Mutex
	byNS map[string]int // namespace -> its open mountinfo
	byFD map[int]string
}

func newMountChanges(procRoot string) (*mountChanges, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	return &mountChanges{procRoot: procRoot, epfd: epfd, byNS: make(map[string]int), byFD: make(map[int]string)}, nil
}

// sync follows the namespaces in reps (namespace -> a pid in it) and stops
// following the others. A process gone before its file was opened is
// skipped: its namespace is looked at again with its next representative.
func (m *mountChanges) sync(reps map[string]int) {
	m.mu.Lock()
	defer m.mu.Unlock()
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
// milliseconds: the changes of settle are given at once.
func (m *mountChanges) run(ctx context.Context, settle time.Duration, changed func(ns []string)) {
	events := make([]unix.EpollEvent, 32)
	for ctx.Err() == nil {
		n, err := unix.EpollWait(m.epfd, events, 500)
		if err != nil || n <= 0 {
			continue // EINTR, or the timeout: look at ctx again
		}
		seen := make(map[string]bool)
		m.note(events[:n], seen)
		deadline := time.Now().Add(settle)
		for left := time.Until(deadline); left > 0; left = time.Until(deadline) {
			n, err := unix.EpollWait(m.epfd, events, int(left.Milliseconds())+1)
			if err == nil && n > 0 {
				m.note(events[:n], seen)
			}
		}
		list := make([]string, 0, len(seen))
		for ns := range seen {
			list = append(list, ns)
		}
		changed(list)
	}
}

func (m *mountChanges) note(events []unix.EpollEvent, seen map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ev := range events {
		if ns, ok := m.byFD[int(ev.Fd)]; ok {
			seen[ns] = true
		}
	}
}

// close stops following every namespace.
func (m *mountChanges) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for fd := range m.byFD {
		unix.Close(fd)
	}
	clear(m.byFD)
	clear(m.byNS)
	unix.Close(m.epfd)
}
