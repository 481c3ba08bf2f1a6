package daemon

import (
	"bytes"
	"slices"
	"sync"

	"github.com/relinkd/relinkd/pkg/scanner"
)

// maxHolderPairs bounds the holder index: (process, directory) pairs,
// about 100 bytes each with the maps around them. A host with 50,000
// descriptors in the watched trees has at most that many pairs, usually
// far fewer (a process holds many files in one directory).
const maxHolderPairs = 200_000

// maxPairFDs bounds the descriptors kept per pair: a user who holds
// thousands of files open in one watched directory costs neither memory
// nor the first look after an unlink more than this (past it, that
// look's whole-table sweep of the process follows as for any holder).
const maxPairFDs = 64

// holderIndex remembers which processes hold files open, live or deleted,
// in which directories of the watched trees, as the last look at each
// process showed (every full sweep reads every descriptor's link anyway).
// An unlink event in a directory then leads straight to the processes
// that held files there, however long they have been running. It is
// safe for concurrent use.
type holderIndex struct {
	mu     sync.Mutex
	byDir  map[string]map[int][]int32 // directory -> holder -> its descriptors there (nil: not known)
	byPID  map[int][]string
	pairs  int
	max    int
	capped bool // pairs beyond max were dropped at the last look
}

func newHolderIndex(max int) *holderIndex {
	return &holderIndex{byDir: make(map[string]map[int][]int32), byPID: make(map[int][]string), max: max}
}

// replace installs what a full sweep saw.
func (x *holderIndex) replace(held []scanner.Held) {
	x.mu.Lock()
	defer x.mu.Unlock()
	clear(x.byDir)
	clear(x.byPID)
	x.pairs, x.capped = 0, false
	x.addLocked(held)
}

// update replaces what is known of pids with what a sweep of them saw.
func (x *holderIndex) update(pids []int, held []scanner.Held) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, pid := range pids {
		x.dropLocked(pid)
	}
	x.addLocked(held)
}

func (x *holderIndex) addLocked(held []scanner.Held) {
	for _, h := range held {
		if x.pairs >= x.max {
			x.capped = true
			return
		}
		m := x.byDir[h.Dir]
		if m == nil {
			m = make(map[int][]int32)
			x.byDir[h.Dir] = m
		}
		if _, ok := m[h.PID]; ok {
			continue
		}
		fds := h.FDs
		if len(fds) > maxPairFDs {
			fds = slices.Clone(fds[:maxPairFDs])
		}
		m[h.PID] = fds
		x.byPID[h.PID] = append(x.byPID[h.PID], h.Dir)
		x.pairs++
	}
}

func (x *holderIndex) dropLocked(pid int) {
	for _, dir := range x.byPID[pid] {
		if m := x.byDir[dir]; m != nil {
			delete(m, pid)
			if len(m) == 0 {
				delete(x.byDir, dir)
			}
			x.pairs--
		}
	}
	delete(x.byPID, pid)
}

// pids returns the processes that held files in dir.
func (x *holderIndex) pids(dir string) []int {
	x.mu.Lock()
	defer x.mu.Unlock()
	m := x.byDir[dir]
	out := make([]int, 0, len(m))
	for pid := range m {
		out = append(out, pid)
	}
	return out
}

// targets returns, for the processes that held files in dirs, the
// descriptors they held there, where the look that saw them listed them:
// the first look after an unlink reads those alone.
func (x *holderIndex) targets(dirs map[string]bool) []scanner.Target {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []scanner.Target
	at := make(map[int]int)
	for dir := range dirs {
		for pid, fds := range x.byDir[dir] {
			if len(fds) == 0 {
				continue
			}
			if i, ok := at[pid]; ok {
				out[i].FDs = append(out[i].FDs, fds...)
				continue
			}
			at[pid] = len(out)
			out = append(out, scanner.Target{PID: pid, FDs: slices.Clone(fds)})
		}
	}
	return out
}

// size returns the number of pairs and whether the bound cut the last look.
func (x *holderIndex) size() (int, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.pairs, x.capped
}

// underRoots returns a test for paths inside any of roots: what the
// holder index keeps.
func underRoots(roots []string) func(path []byte) bool {
	rs := make([][]byte, 0, len(roots))
	for _, r := range roots {
		rs = append(rs, []byte(r))
	}
	slices.SortFunc(rs, func(a, b []byte) int { return len(a) - len(b) })
	return func(path []byte) bool {
		for _, r := range rs {
			if bytes.HasPrefix(path, r) && (len(path) == len(r) || path[len(r)] == '/' || len(r) == 1) {
				return true
			}
		}
		return false
	}
}
