package daemon

import (
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// listPIDs returns the process ids under procRoot (one getdents pass; no
// per-process reads). An unreadable root gives nil: the sweep reports it.
func listPIDs(procRoot string) []int {
	f, err := os.Open(procRoot)
	if err != nil {
		return nil
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil && len(names) == 0 {
		return nil
	}
	pids := make([]int, 0, len(names))
	for _, n := range names {
		if n == "" || n[0] < '1' || n[0] > '9' {
			continue
		}
		if pid, err := strconv.Atoi(n); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// birthTime returns the birth time (statx(2) STATX_BTIME, in ns) of the
// file open as c's descriptor, 0 where the filesystem does not record one,
// and false when the descriptor is gone.
func birthTime(procRoot string, c *scanner.Candidate) (int64, bool) {
	path := procRoot + "/" + c.ProcDir() + "/fd/" + strconv.Itoa(c.FD)
	return statxBirth(unix.AT_FDCWD, path, 0)
}

// birthTimeFD is birthTime for a descriptor of the daemon's own.
func birthTimeFD(fd int) (int64, bool) {
	return statxBirth(fd, "", unix.AT_EMPTY_PATH)
}

func statxBirth(dirfd int, path string, flags int) (int64, bool) {
	var stx unix.Statx_t
	err := eintr.Retry0(func() error {
		return unix.Statx(dirfd, path, flags|unix.AT_STATX_SYNC_AS_STAT, unix.STATX_BTIME, &stx)
	})
	if err != nil {
		return 0, false
	}
	if stx.Mask&unix.STATX_BTIME == 0 {
		return 0, true
	}
	return stx.Btime.Sec*1_000_000_000 + int64(stx.Btime.Nsec), true
}

// lastPID returns the pid most recently created on the host: the last
// field of /proc/loadavg (proc(5)).
func lastPID(procRoot string) (int, bool) {
	b, err := os.ReadFile(procRoot + "/loadavg")
	if err != nil {
		return 0, false
	}
	return procfs.ParseLoadavgLastPID(b)
}

// newLeaders returns, newest first, the processes (thread-group leaders)
// whose pid is in (prev, last]. The pid counter hands out thread ids too,
// and /proc/TID/fd of a thread shows its whole process again: sweeping
// every id in the range would read a multi-threaded newcomer once per
// thread, and the daemon's own threads would show its own pins. So each
// id's thread group is read once (/proc/TID/task lists all of it) and only
// leaders born in the range are kept; ids that are gone are skipped.
func newLeaders(procRoot string, prev, last int) []int {
	seen := make(map[int]bool)
	var out []int
	for tid := prev + 1; tid <= last; tid++ {
		if seen[tid] {
			continue
		}
		f, err := os.Open(procRoot + "/" + strconv.Itoa(tid) + "/task")
		if err != nil {
			continue
		}
		names, _ := f.Readdirnames(-1)
		f.Close()
		leader := 0
		for _, n := range names {
			id, err := strconv.Atoi(n)
			if err != nil {
				continue
			}
			seen[id] = true
			if leader == 0 || id < leader {
				leader = id
			}
		}
		if leader > prev && leader <= last {
			out = append(out, leader)
		}
	}
	slices.Sort(out)
	slices.Reverse(out)
	return slices.Compact(out)
}
