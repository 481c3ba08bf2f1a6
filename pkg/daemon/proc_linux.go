package daemon

import (
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// listPIDs returns the process ids under the proc root (one getdents
// pass; no per-process reads). An unreadable root gives nil: the sweep
// reports it.
func listPIDs(proc procfs.FS) []int {
	pids, err := proc.PIDs()
	if err != nil && len(pids) == 0 {
		return nil
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

// newLeaders returns, newest first, the processes (thread-group leaders)
// whose pid is in (prev, last]. The pid counter hands out thread ids too,
// and /proc/TID/fd of a thread shows its whole process again: sweeping
// every id in the range would read a multi-threaded newcomer once per
// thread, and the daemon's own threads would show its own pins. So each
// id's thread group is read once (/proc/TID/task lists all of it) and only
// leaders born in the range are kept; ids that are gone are skipped.
func newLeaders(proc procfs.FS, prev, last int) []int {
	ids := make([]int, 0, max(0, last-prev))
	for id := prev + 1; id <= last; id++ {
		ids = append(ids, id)
	}
	return newLeadersOf(proc, ids, prev, last)
}

// newLeadersOf is newLeaders for some of the ids in (prev, last] only.
func newLeadersOf(proc procfs.FS, ids []int, prev, last int) []int {
	seen := make(map[int]bool)
	var out []int
	for _, tid := range ids {
		if seen[tid] {
			continue
		}
		ids, err := proc.Threads(tid)
		if err != nil && len(ids) == 0 {
			continue
		}
		leader := 0
		for _, id := range ids {
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
