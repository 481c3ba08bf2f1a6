package daemon

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/relinkd/relinkd/internal/procfs"
)

// views keeps the watched trees watched in every mount namespace that has
// processes: a container sees its own /var/log, which no watch on the
// host's /var/log covers. Each other namespace's view of a root is
// watched through /proc/PID/root/ROOT of one of its processes (inotify
// resolves the path in that namespace), added when the namespace appears
// and dropped when its last process is gone; the watcher's bound
// (scan.max_watches) applies to all of them together.
//
// In container mode (Options.HostRoot) the daemon's own view is its
// container's: the host's trees are watched below the host root instead
// (HOSTROOT/var/log), and events there are named as the host sees them.
type views struct {
	procRoot string
	hostRoot string // "" or the host root of container mode, prefix of the host's watched trees
	own      string // the daemon's mount namespace, and the host's
	host     string // PID 1's ("" when unknown)

	mu   sync.Mutex     // one update at a time: the loop and the full pass both call it
	reps map[string]int // other namespace -> the pid its views go through
	// Other processes seen in each namespace, newest last, at most
	// maxMembers: where a representative that exits is replaced from.
	members map[string][]int
	roots   []string     // the last set given to the watcher
	known   map[int]bool // pids whose namespace was looked at, as of the last listing
}

func newViews(procRoot, hostRoot string) *views {
	if hostRoot == "/" {
		hostRoot = ""
	}
	v := &views{procRoot: procRoot, hostRoot: strings.TrimSuffix(hostRoot, "/"), reps: make(map[string]int),
		members: make(map[string][]int), known: make(map[int]bool)}
	proc := procfs.New(procRoot)
	v.own, _ = proc.MountNS("self")
	v.host, _ = proc.MountNS("1")
	return v
}

// nsOf returns pid's mount namespace ("mnt:[N]"), "" when gone.
func (v *views) nsOf(pid int) string {
	ns, _ := procfs.New(v.procRoot).MountNS(strconv.Itoa(pid))
	return ns
}

// other reports whether ns is a namespace whose views need watches of
// their own.
func (v *views) other(ns string) bool { return ns != "" && ns != v.own && ns != v.host }

// full replaces the namespaces with those of pids (every process, from a
// full pass) and returns the roots to watch, with changed false when
// they are the same as last time.
func (v *views) full(pids []int, base []string) (roots []string, changed bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	seen := make(map[string]int)
	v.members = make(map[string][]int)
	for _, pid := range pids {
		if ns := v.nsOf(pid); v.other(ns) {
			if rep, ok := seen[ns]; !ok || pid < rep {
				seen[ns] = pid
			}
			v.member(ns, pid)
		}
	}
	// Keep a namespace's representative while it lives: its watches'
	// paths go through it.
	for ns, rep := range v.reps {
		if cur, ok := seen[ns]; ok && cur != rep && v.nsOf(rep) == ns {
			seen[ns] = rep
		}
	}
	v.reps = seen
	v.known = make(map[int]bool, len(pids))
	for _, pid := range pids {
		v.known[pid] = true
	}
	return v.rootsLocked(base)
}

// add notes the namespaces of the processes in listed (a listing of
// /proc, between full passes) that were not there at the last listing,
// and returns the roots to watch, changed when a namespace was new, and
// the new processes found in other namespaces (to be swept at once, so
// that the holder index knows what they hold there). Only new processes
// cost a readlink.
func (v *views) add(listed []int, base []string) (roots []string, changed bool, fresh []int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	var pids []int
	if listed != nil {
		next := make(map[int]bool, len(listed))
		for _, pid := range listed {
			next[pid] = true
			if !v.known[pid] {
				pids = append(pids, pid)
			}
		}
		v.known = next
	}
	return v.addLocked(pids, base)
}

// bornElsewhere returns the processes with pids in (prev, last], the ids
// handed out since the last look, that live in another mount namespace:
// one readlink of ns/mnt per id, and the thread listing that tells a
// process from a thread only for the few in other namespaces.
func (v *views) bornElsewhere(prev, last int) []int {
	var ids []int
	for id := prev + 1; id <= last; id++ {
		if v.other(v.nsOf(id)) {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	return newLeadersOf(procfs.New(v.procRoot), ids, prev, last)
}

// addNew is add for pids known to be new (found by bornElsewhere),
// without a listing of /proc.
func (v *views) addNew(pids []int, base []string) (roots []string, changed bool, fresh []int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, pid := range pids {
		v.known[pid] = true
	}
	return v.addLocked(pids, base)
}

func (v *views) addLocked(pids []int, base []string) (roots []string, changed bool, fresh []int) {
	for _, pid := range pids {
		if ns := v.nsOf(pid); v.other(ns) {
			if _, ok := v.reps[ns]; !ok {
				v.reps[ns] = pid
			}
			v.member(ns, pid)
			fresh = append(fresh, pid)
		}
	}
	v.repairLocked()
	roots, changed = v.rootsLocked(base)
	return roots, changed, fresh
}

// maxMembers bounds the processes kept per namespace to replace its
// representative from.
const maxMembers = 8

func (v *views) member(ns string, pid int) {
	m := append(v.members[ns], pid)
	v.members[ns] = m[max(0, len(m)-maxMembers):]
}

// repairLocked replaces the representatives that are gone. A runtime's
// first process in a new namespace often lives only while it sets the
// container up (runc's intermediate stages), and views through a dead
// pid name nothing. The replacement is another process seen in the
// namespace, or, when none lives, one found in a listing of /proc; a
// namespace without processes is dropped. One readlink per namespace.
func (v *views) repairLocked() {
	for ns, rep := range v.reps {
		if v.nsOf(rep) == ns {
			continue
		}
		alive := 0
		members := v.members[ns]
		for i := len(members) - 1; i >= 0 && alive == 0; i-- {
			if pid := members[i]; pid != rep && v.nsOf(pid) == ns {
				alive = pid
			}
		}
		if alive == 0 {
			pids, _ := procfs.New(v.procRoot).PIDs()
			for _, pid := range pids {
				if v.nsOf(pid) == ns {
					alive = pid
					break
				}
			}
		}
		if alive == 0 {
			delete(v.reps, ns)
			delete(v.members, ns)
			continue
		}
		v.reps[ns] = alive
	}
}

func (v *views) rootsLocked(base []string) ([]string, bool) {
	roots := make([]string, 0, len(base))
	for _, r := range base {
		roots = append(roots, v.hostRoot+r)
	}
	for _, rep := range v.reps {
		prefix := v.procRoot + "/" + strconv.Itoa(rep) + "/root"
		for _, r := range base {
			roots = append(roots, prefix+r)
		}
	}
	slices.Sort(roots)
	if slices.Equal(roots, v.roots) {
		return roots, false
	}
	v.roots = roots
	return roots, true
}

// representatives returns each other namespace watched and the pid its
// views go through.
func (v *views) representatives() map[string]int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return maps.Clone(v.reps)
}

// viewPrefix returns the path below which ns's views are watched
// (PROC/PID/root), "" when ns is not watched.
func (v *views) viewPrefix(ns string) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	rep, ok := v.reps[ns]
	if !ok {
		return ""
	}
	return v.procRoot + "/" + strconv.Itoa(rep) + "/root"
}

// namespaces returns the other namespaces watched ("mnt:[N]"), sorted.
func (v *views) namespaces() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]string, 0, len(v.reps))
	for ns := range v.reps {
		out = append(out, ns)
	}
	slices.Sort(out)
	return out
}

// viewOf turns a watched directory back into the path its namespace sees:
// /proc/PID/root/var/log/app is /var/log/app for the holders there, and in
// container mode HOSTROOT/var/log/app is the host's /var/log/app (the proc
// root may itself be below the host root: it is looked at first).
func (v *views) viewOf(dir string) string {
	if view, ok := v.procView(dir); ok {
		return view
	}
	if v.hostRoot != "" {
		if rest, ok := strings.CutPrefix(dir, v.hostRoot); ok && (rest == "" || rest[0] == '/') {
			if rest == "" {
				return "/"
			}
			return rest
		}
	}
	return dir
}

// procView is the path that PROC/PID/root/… names in PID's namespace.
func (v *views) procView(dir string) (string, bool) {
	rest, ok := strings.CutPrefix(dir, v.procRoot+"/")
	if !ok {
		return "", false
	}
	pid, after, ok := strings.Cut(rest, "/")
	if !ok || pid == "" || strings.Trim(pid, "0123456789") != "" {
		return "", false
	}
	view, ok := strings.CutPrefix(after, "root")
	if !ok || view != "" && view[0] != '/' {
		return "", false
	}
	if view == "" {
		return "/", true
	}
	return view, true
}
