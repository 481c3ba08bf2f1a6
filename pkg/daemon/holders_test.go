package daemon

import (
	"fmt"
	"reflect"
	"runtime"
	"slices"
	"testing"

	"github.com/relinkd/relinkd/pkg/scanner"
)

// TestHolderIndex: a full look replaces everything, a look at some pids
// replaces what is known of them only, the bound holds, and underRoots
// keeps exactly the paths inside the roots.
func TestHolderIndex(t *testing.T) {
	x := newHolderIndex(4)
	x.replace([]scanner.Held{{PID: 1, Dir: "/var/log"}, {PID: 2, Dir: "/var/log"}, {PID: 2, Dir: "/srv"}})
	if got := sorted(x.pids("/var/log")); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("/var/log: %v", got)
	}
	x.update([]int{2}, []scanner.Held{{PID: 2, Dir: "/srv/a"}})
	if got := sorted(x.pids("/var/log")); !slices.Equal(got, []int{1}) {
		t.Errorf("/var/log after pid 2 moved: %v", got)
	}
	if got := x.pids("/srv"); len(got) != 0 {
		t.Errorf("/srv after pid 2 moved: %v", got)
	}
	x.update([]int{3}, []scanner.Held{{PID: 3, Dir: "/a"}, {PID: 3, Dir: "/b"}, {PID: 3, Dir: "/c"}, {PID: 3, Dir: "/d"}})
	if n, capped := x.size(); n != 4 || !capped {
		t.Errorf("size %d capped %v, want 4 true", n, capped)
	}
	x.replace(nil)
	if n, capped := x.size(); n != 0 || capped {
		t.Errorf("after an empty full look: %d %v", n, capped)
	}

	in := underRoots([]string{"/var/log", "/srv"})
	for path, want := range map[string]bool{
		"/var/log": true, "/var/log/x": true, "/var/logs/x": false, "/srv/a/b": true, "/sr": false, "/tmp/x": false,
	} {
		if got := in([]byte(path)); got != want {
			t.Errorf("underRoots(%q) = %v, want %v", path, got, want)
		}
	}
	if !underRoots([]string{"/"})([]byte("/anything")) {
		t.Error("root / keeps everything")
	}
}

func sorted(xs []int) []int { slices.Sort(xs); return xs }

// TestViewOf: a watched directory reached through /proc/PID/root is the
// path its namespace sees; anything else is left alone.
func TestViewOf(t *testing.T) {
	v := &views{procRoot: "/proc"}
	for dir, want := range map[string]string{
		"/proc/123/root/var/log/app": "/var/log/app",
		"/proc/123/root":             "/",
		"/proc/123/rootfs/x":         "/proc/123/rootfs/x",
		"/proc/self/root/x":          "/proc/self/root/x",
		"/var/log":                   "/var/log",
	} {
		if got := v.viewOf(dir); got != want {
			t.Errorf("viewOf(%q) = %q, want %q", dir, got, want)
		}
	}
}

// TestHolderTargets: the descriptors the index saw in some directories,
// merged per process; a pair whose descriptors are not known (the BPF
// walk) gives none.
func TestHolderTargets(t *testing.T) {
	x := newHolderIndex(100)
	x.replace([]scanner.Held{
		{PID: 1, Dir: "/var/log", FDs: []int32{3, 4}},
		{PID: 1, Dir: "/srv", FDs: []int32{7}},
		{PID: 2, Dir: "/var/log"},
		{PID: 3, Dir: "/tmp", FDs: []int32{5}},
	})
	got := x.targets(map[string]bool{"/var/log": true, "/srv": true})
	for i := range got {
		slices.Sort(got[i].FDs)
	}
	if want := []scanner.Target{{PID: 1, FDs: []int32{3, 4, 7}}}; !reflect.DeepEqual(got, want) {
		t.Errorf("targets: %+v, want %+v", got, want)
	}
	if got := x.targets(map[string]bool{"/nowhere": true}); len(got) != 0 {
		t.Errorf("targets of an unknown directory: %+v", got)
	}
	// A process holding more files in a directory than the bound: only
	// the first maxPairFDs are kept.
	many := make([]int32, 5*maxPairFDs)
	for i := range many {
		many[i] = int32(i)
	}
	x.update([]int{4}, []scanner.Held{{PID: 4, Dir: "/big", FDs: many}})
	got = x.targets(map[string]bool{"/big": true})
	if len(got) != 1 || !slices.Equal(got[0].FDs, many[:maxPairFDs]) {
		t.Errorf("targets of a crowded directory: %d targets, want 1 with the first %d descriptors", len(got), maxPairFDs)
	}
}

// BenchmarkHolderIndexMemory reports the heap the holder index takes per
// (process, directory) pair, with what it keeps of the scanner's pairs
// (the directory's name and the descriptors), filled as a full /proc
// sweep of 500 processes × 100 descriptors would fill it when every
// descriptor is in a watched tree (each process in 10 directories of 10
// files: 5,000 pairs), and at 50,000 pairs (every descriptor in a
// directory of its own).
func BenchmarkHolderIndexMemory(b *testing.B) {
	for _, tt := range []struct {
		name        string
		procs, dirs int
	}{{"500procs_10dirs", 500, 10}, {"500procs_100dirs", 500, 100}} {
		b.Run(tt.name, func(b *testing.B) {
			perDir := 100 / tt.dirs
			var before, after runtime.MemStats
			var x *holderIndex
			for range b.N {
				runtime.GC()
				runtime.ReadMemStats(&before)
				held := make([]scanner.Held, 0, tt.procs*tt.dirs)
				for p := range tt.procs {
					for d := range tt.dirs {
						fds := make([]int32, perDir)
						for i := range fds {
							fds[i] = int32(10 + d*perDir + i)
						}
						held = append(held, scanner.Held{PID: 1000 + p, Dir: fmt.Sprintf("/var/log/app%d/d%d", p%50, d), FDs: fds})
					}
				}
				x = newHolderIndex(maxHolderPairs)
				x.replace(held)
				held = nil
				runtime.GC()
				runtime.ReadMemStats(&after)
			}
			n, _ := x.size()
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "bytes/pair")
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "MiB")
		})
	}
}
