package daemon

import (
	"os"
	"strconv"
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
