package scanner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/internal/testcontainer"
	"github.com/relinkd/relinkd/internal/testproc"
)

// startBenchHolders starts n holders with m descriptors each, 5% deleted.
func startBenchHolders(b testing.TB, n, m int) []int {
	b.Helper()
	dir := b.TempDir()
	var pids []int
	for p := 0; p < n; p++ {
		var steps []testproc.Step
		for f := 0; f < m; f++ {
			steps = append(steps, testproc.Open(filepath.Join(dir, fmt.Sprintf("h%d-f%d", p, f)), "rw"))
		}
		for f := 0; f < m/20; f++ {
			steps = append(steps, testproc.Unlink(filepath.Join(dir, fmt.Sprintf("h%d-f%d", p, f))))
		}
		pids = append(pids, testproc.Start(b, steps...).PID)
	}
	return pids
}

// BenchmarkSweepPerFD compares the sweep's cost per descriptor with the
// floor the kernel sets: one readlinkat(2) per descriptor on an open fd
// directory, single-threaded, doing nothing else.
func BenchmarkSweepPerFD(b *testing.B) {
	pids := startBenchHolders(b, 20, 100)
	s := New(Options{Workers: 1}, nil)
	var fds int
	b.Run("sweep", func(b *testing.B) {
		for b.Loop() {
			res, err := s.SweepPIDs(context.Background(), pids)
			if err != nil {
				b.Fatal(err)
			}
			fds = res.FDs
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*fds), "ns/fd")
	})
	b.Run("readlink-floor", func(b *testing.B) {
		buf := make([]byte, 4096)
		for b.Loop() {
			fds = 0
			for _, pid := range pids {
				d, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
				if err != nil {
					b.Fatal(err)
				}
				f := os.NewFile(uintptr(d), "fd")
				names, _ := f.Readdirnames(-1)
				for _, n := range names {
					if _, err := unix.Readlinkat(d, n, buf); err == nil {
						fds++
					}
				}
				f.Close()
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*fds), "ns/fd")
	})
}

// BenchmarkSweepOnePID is the daemon's event path: a targeted sweep of one
// holder, holder identity included.
func BenchmarkSweepOnePID(b *testing.B) {
	dir := b.TempDir()
	h := testproc.Start(b, testproc.Open(filepath.Join(dir, "a"), "rw"), testproc.Unlink(filepath.Join(dir, "a")))
	s := New(Options{}, nil)
	for b.Loop() {
		res, err := s.SweepPIDs(context.Background(), []int{h.PID})
		if err != nil || len(res.Candidates) != 1 {
			b.Fatal(err, res)
		}
	}
}

// BenchmarkHolderNamespace is what telling a container's holder from a
// host's adds per holder of a candidate (never per descriptor, never for
// a process without a candidate): one readlink of ns/mnt for a host
// holder; that, the cgroup and a statx of the root for a container's.
func BenchmarkHolderNamespace(b *testing.B) {
	dir := b.TempDir()
	host := testproc.Start(b, testproc.Open(filepath.Join(dir, "a"), "rw"), testproc.Unlink(filepath.Join(dir, "a")))
	ct := testcontainer.New(b, testcontainer.Options{Cgroup: testcontainer.Docker})
	inCt := ct.Start(b, testproc.Open("/a", "rw"), testproc.Unlink("/a"))
	s := New(Options{}, nil)
	rootfd, err := procfs.OpenDirAt(unix.AT_FDCWD, "/proc")
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(rootfd)
	w := newWorker(s, rootfd)
	for _, tc := range []struct {
		name string
		pid  int
		want bool
	}{{"host", host.PID, false}, {"container", inCt.PID, true}} {
		b.Run(tc.name, func(b *testing.B) {
			dir := strconv.Itoa(tc.pid)
			for b.Loop() {
				if ns, _, _ := w.namespace(dir); (ns != 0) != tc.want {
					b.Fatalf("pid %d: mntns %d", tc.pid, ns)
				}
			}
		})
	}
}

// BenchmarkBackends sets the BPF sweep beside the /proc sweep on the same
// holders (100 × 100 descriptors, 5% deleted): the in-kernel walk alone,
// the whole sweep (the walk, a stat per candidate and the holders'
// identity), and a targeted sweep of one holder.
func BenchmarkBackends(b *testing.B) {
	bpf := New(Options{Backend: BackendBPF}, nil)
	defer bpf.Close()
	if name, why := bpf.Backend(); name != BackendBPF {
		b.Skip("bpf backend unavailable: " + why)
	}
	proc := New(Options{Backend: BackendProc}, nil)
	pids := startBenchHolders(b, 100, 100)
	ctx := context.Background()
	k := bpf.bpf.Load()
	var buf []byte
	b.Run("bpf-walk", func(b *testing.B) {
		for b.Loop() {
			var err error
			if buf, err = k.read(k.objs.Sweep, 0, buf[:0]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bpf-walk-onepid", func(b *testing.B) {
		for b.Loop() {
			var err error
			if buf, err = k.read(k.objs.Sweep, pids[0], buf[:0]); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, tc := range []struct {
		name string
		s    *Scanner
	}{{"bpf", bpf}, {"proc", proc}} {
		b.Run(tc.name+"-sweep", func(b *testing.B) {
			for b.Loop() {
				if _, err := tc.s.Sweep(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tc.name+"-onepid", func(b *testing.B) {
			for b.Loop() {
				if res, err := tc.s.SweepPIDs(ctx, pids[:1]); err != nil || len(res.Candidates) != 5 {
					b.Fatal(err, len(res.Candidates))
				}
			}
		})
	}
}
