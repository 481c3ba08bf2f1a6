package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/internal/testcontainer"
	"github.com/relinkd/relinkd/internal/testfs"
)

// TestViewsHostRoot: in container mode the host's trees are watched
// below the host root, and a directory there is named as the host sees
// it; other namespaces' views and other paths are left as they are.
func TestViewsHostRoot(t *testing.T) {
	v := newViews("/host/proc", "/host/")
	roots, changed := v.rootsLocked([]string{"/var/log", "/srv"})
	if want := []string{"/host/srv", "/host/var/log"}; !changed || !slices.Equal(roots, want) {
		t.Errorf("roots %v (changed %v), want %v", roots, changed, want)
	}
	for _, tt := range []struct{ name, dir, want string }{
		{"below the host root", "/host/var/log/app", "/var/log/app"},
		{"the host root", "/host", "/"},
		{"a sibling with the same prefix", "/hostile/x", "/hostile/x"},
		{"another namespace's view", "/host/proc/12/root/var/log", "/var/log"},
		{"the container's own path", "/etc/relinkd", "/etc/relinkd"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := v.viewOf(tt.dir); got != tt.want {
				t.Errorf("viewOf(%q) = %q, want %q", tt.dir, got, tt.want)
			}
		})
	}
}

// inNewMountNS starts script in a mount namespace of its own (unshare
// --mount, private propagation) and returns its pid and namespace; it is
// killed at cleanup.
func inNewMountNS(t *testing.T, script string) (int, string) {
	t.Helper()
	cmd, _ := testcontainer.Unshare(t, []string{"--mount", "--propagation", "private"}, "echo ready; "+script)
	ns, err := procfs.New("/proc").MountNS(strconv.Itoa(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid, ns
}

// TestMountChanges: a mount in a followed namespace is reported, once
// for a burst; a namespace no longer followed is not.
func TestMountChanges(t *testing.T) {
	testfs.RequireTool(t, "nsenter")
	dir := t.TempDir()
	pid, ns := inNewMountNS(t, "exec sleep 100")
	m, err := newMountChanges("/proc")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan []string, 8)
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.run(ctx, 20*time.Millisecond, 500*time.Millisecond, func(nss []string) { got <- nss })
	}()
	defer func() { cancel(); <-done; m.close() }()
	m.sync(map[string]int{ns: pid})
	mount := func(target string) {
		t.Helper()
		if out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-m", "mount", "-t", "tmpfs", "tmpfs", target).CombinedOutput(); err != nil {
			t.Fatalf("mount in the namespace: %v: %s", err, out)
		}
	}
	mount(dir)
	select {
	case nss := <-got:
		if !slices.Equal(nss, []string{ns}) {
			t.Errorf("changed %v, want [%s]", nss, ns)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no change reported for a mount in the namespace")
	}
	// A user mounting and unmounting in a loop gets one report per gap.
	loop := fmt.Sprintf("for i in $(seq 40); do mount -t tmpfs tmpfs %s && umount %s; done", dir, dir)
	began := time.Now()
	if out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-m", "sh", "-c", loop).CombinedOutput(); err != nil {
		t.Fatalf("mount loop in the namespace: %v: %s", err, out)
	}
	took := time.Since(began)
	reports := 0
	for quiet := time.After(1200 * time.Millisecond); ; {
		select {
		case <-got:
			reports++
			continue
		case <-quiet:
		}
		break
	}
	if most := 2 + int(took/(500*time.Millisecond)); reports < 1 || reports > most {
		t.Errorf("80 mount changes in %v gave %d reports, want 1 to %d (one per 500 ms gap)", took, reports, most)
	}
	m.sync(nil)
	mount(filepath.Join(dir, "."))
	select {
	case nss := <-got:
		t.Errorf("changed %v after the namespace was no longer followed", nss)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestRepairRepresentative: a namespace's first process often lives only
// while it sets up (runc's intermediate stages); once it is gone, the
// views go through another process of the namespace, and a namespace
// whose processes are all gone is dropped.
func TestRepairRepresentative(t *testing.T) {
	// The first process leaves a child behind and exits a moment later.
	first, ns := inNewMountNS(t, "sleep 100 & sleep 0.3")
	v := newViews("/proc", "")
	var child int
	for deadline := time.Now().Add(5 * time.Second); child == 0 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", first, first))
		if f := strings.Fields(string(b)); len(f) > 0 {
			child, _ = strconv.Atoi(f[0])
		}
	}
	if child == 0 {
		t.Fatal("no child of the first process")
	}
	base := []string{"/var/log"}
	roots, _, _ := v.addNew([]int{first, child}, base)
	if want := fmt.Sprintf("/proc/%d/root/var/log", first); !slices.Contains(roots, want) {
		t.Fatalf("roots %v, want %s (the first process)", roots, want)
	}
	// The first exits; the next look repairs.
	for deadline := time.Now().Add(5 * time.Second); v.nsOf(first) == ns && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
	}
	roots, changed, _ := v.addNew(nil, base)
	if want := fmt.Sprintf("/proc/%d/root/var/log", child); !changed || !slices.Contains(roots, want) {
		t.Fatalf("after the first exited: roots %v (changed %v), want %s", roots, changed, want)
	}
	if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); v.nsOf(child) == ns && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
	}
	if roots, _, _ := v.addNew(nil, base); slices.ContainsFunc(roots, func(r string) bool { return strings.HasPrefix(r, "/proc/") }) {
		t.Errorf("after every process of the namespace exited: roots %v, want the host's alone", roots)
	}
}
