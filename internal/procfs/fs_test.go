package procfs

import (
	"errors"
	"io/fs"
	"os"
	"reflect"
	"slices"
	"testing"
)

var fixture = New("testdata/proc")

func TestFSLists(t *testing.T) {
	for _, tc := range []struct {
		name string
		list func() ([]int, error)
		want []int
	}{
		{"pids", fixture.PIDs, []int{1, 42, 77}},
		{"threads", func() ([]int, error) { return fixture.Threads(42) }, []int{42, 43}},
		{"fds", func() ([]int, error) { return fixture.FDs("42") }, []int{0, 3, 4}},
		{"empty table of an exited leader", func() ([]int, error) { return fixture.FDs("77") }, nil},
		{"fds of a thread", func() ([]int, error) { return fixture.FDs("77/task/78") }, []int{5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.list()
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(got)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("-want +got:\n-%v\n+%v", tc.want, got)
			}
		})
	}
	if _, err := fixture.Threads(99); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("threads of a vanished process: %v, want ErrNotExist", err)
	}
}

func TestFSReaders(t *testing.T) {
	if tid := fixture.LiveThread(77); tid != 78 {
		t.Errorf("LiveThread(77) = %d, want 78", tid)
	}
	if tid := fixture.LiveThread(1); tid != 0 {
		t.Errorf("LiveThread(1) = %d, want 0 (no thread but the leader)", tid)
	}
	if pid, ok := fixture.LastPID(); !ok || pid != 4321 {
		t.Errorf("LastPID = %d, %v; want 4321", pid, ok)
	}
	if st, err := fixture.Stat(42); err != nil || st != (Stat{Comm: "my (app)", StartTime: 987654}) {
		t.Errorf("Stat(42) = %+v, %v", st, err)
	}
	if _, err := fixture.Stat(99); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Stat of a vanished process: %v, want ErrNotExist", err)
	}
	if caps, err := fixture.EffectiveCaps("self"); err != nil || caps != 0x280004 {
		t.Errorf("EffectiveCaps(self) = %#x, %v", caps, err)
	}
	if _, err := fixture.EffectiveCaps("77"); !errors.Is(err, ErrNoCapEff) {
		t.Errorf("EffectiveCaps without CapEff: %v, want ErrNoCapEff", err)
	}
	if fi, err := fixture.FDInfo("77/task/78", 5); err != nil || fi != (FDInfo{Pos: 7, Flags: 0o100001, MntID: 27}) {
		t.Errorf("FDInfo(77/task/78, 5) = %+v, %v", fi, err)
	}
	ms, err := fixture.MountInfo("42")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[1].MountPoint != "/var/log/with space" {
		t.Errorf("MountInfo(42) = %+v, want 2 mounts, the second at %q", ms, "/var/log/with space")
	}
	for dir, want := range map[string]string{"1": "mnt:[4026531841]", "self": "mnt:[4026532289]"} {
		if ns, err := fixture.MountNS(dir); err != nil || ns != want {
			t.Errorf("MountNS(%s) = %q, %v; want %q", dir, ns, err, want)
		}
	}
}

// TestFSReal reads this process through the real /proc.
func TestFSReal(t *testing.T) {
	var p FS
	pids, err := p.PIDs()
	if err != nil || !slices.Contains(pids, os.Getpid()) {
		t.Fatalf("PIDs = %d pids, %v; want ours (%d) among them", len(pids), err, os.Getpid())
	}
	if _, err := p.Stat(os.Getpid()); err != nil {
		t.Error(err)
	}
	if _, err := p.MountNS("self"); err != nil {
		t.Error(err)
	}
	if _, ok := p.LastPID(); !ok {
		t.Error("LastPID failed")
	}
}
