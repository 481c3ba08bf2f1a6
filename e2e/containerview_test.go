package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testfs"
)

// containerHolder runs in its own mount and PID namespaces, with a tmpfs
// at $DIR that only it sees (the host's $DIR stays empty): it writes a
// file there, says ready, waits for a line on stdin, deletes the file and
// exits 50 ms later.
const containerHolder = `
set -e
mount -t tmpfs -o size=8m tmpfs "$DIR"
exec python3 -c '
import os, sys, time
p = sys.argv[1]
f = open(p, "w+b")
f.write(b"inside the container\n" * 100)
f.flush()
print("ready", flush=True)
sys.stdin.readline()
os.unlink(p)
time.sleep(0.05)
' "$DIR/app.log"
`

// TestContainerView: a process in another mount namespace that deletes a
// file in its own view of a watched directory, and exits 50 ms later, is
// caught by the event path (sweeps an hour apart): the directory is
// watched in that namespace's view (through /proc/PID/root), which no
// watch on the host's directory covers. When the namespace's processes
// are gone, its watches are dropped.
func TestContainerView(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "unshare")
	testfs.RequireTool(t, "python3")
	mnt := testfs.Mount(t, "ext4", 64)
	watched, rescued := filepath.Join(mnt, "w"), filepath.Join(mnt, "rescued")
	app := filepath.Join(watched, "app")
	mkdirs(t, app)
	cfg := strings.Replace(baseConfig("1h", true, rule("w", "rescue", []string{watched + "/**"}), rescued),
		"  min_free: 1%", "  min_free: 1%\n  cross_fs: true\n  follow: false", 1)
	d := startDaemon(t, writeConfig(t, cfg))

	cmd := exec.Command("unshare", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c", containerHolder)
	cmd.Env = append(cmd.Environ(), "DIR="+app)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("container holder: %q %v", line, err)
	}
	// Its namespace is noticed within a second, and its view watched.
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	watching := func(e Event) bool {
		if e.Msg() != "watched trees" {
			return false
		}
		list, _ := e["mntns"].([]any)
		for _, x := range list {
			if x == ns {
				return true
			}
		}
		return false
	}
	ev := d.Wait("the container's view watched", 10*time.Second, watching)
	t.Logf("watched: %v roots, %v watches", ev["roots"], ev["watches"])
	path := filepath.Join(app, "app.log")
	if _, err := in.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	got := d.Wait("the container's file rescued", 10*time.Second, Rescued(path))
	if sha(t, got.str("rescued_to")) != shaBytes([]byte(strings.Repeat("inside the container\n", 100))) {
		t.Error("rescued content differs")
	}
	if err := cmd.Wait(); err != nil {
		t.Logf("container exit: %v", err)
	}
	// Gone: the full pass that follows the removal (at the end of the
	// full-pass gap) drops its view.
	d.Wait("views dropped", 15*time.Second, func(e Event) bool {
		return e.Msg() == "watched trees" && !watching(e) && e.str("ts") > ev.str("ts")
	})
	// The view's directories above its tmpfs are the host's own inodes,
	// watched once under both names: dropping the view must leave the
	// host's watches in place. A host holder that deletes its file there
	// and exits 50 ms later is still caught by the event path.
	host := filepath.Join(watched, "host.log")
	data := string(content(host, 4096))
	shortLived(t, host, data, 50*time.Millisecond)
	got = d.Wait("the host's file rescued after the view was dropped", 10*time.Second, Rescued(host))
	if sha(t, got.str("rescued_to")) != shaBytes([]byte(data)) {
		t.Error("rescued content differs")
	}
}

// youngContainer is a container that its runtime is still setting up
// when the daemon first sees its namespace: 300 ms after the namespace is
// made it mounts a tmpfs at $DIR, which only it sees, writes a file
// there, deletes it 600 ms later and exits 50 ms after that.
const youngContainer = `
set -e
sleep 0.3
mount -t tmpfs -o size=8m tmpfs "$DIR"
exec python3 -c '
import os, sys, time
p = sys.argv[1]
f = open(p, "w+b")
f.write(b"young container\n" * 100)
f.flush()
time.sleep(0.6)
os.unlink(p)
time.sleep(0.05)
' "$DIR/$NAME"
`

// TestYoungContainerView: a container's namespace is often seen before
// its mounts are made. The view's trees are walked again when mounts
// change in its namespace, so a file deleted in a directory mounted after
// the namespace was seen (and its holder gone 50 ms later) is caught by
// the event path, with sweeps an hour apart.
func TestYoungContainerView(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "unshare")
	testfs.RequireTool(t, "python3")
	mnt := testfs.Mount(t, "ext4", 64)
	watched, rescued := filepath.Join(mnt, "w"), filepath.Join(mnt, "rescued")
	app := filepath.Join(watched, "app")
	mkdirs(t, app)
	cfg := strings.Replace(baseConfig("1h", true, rule("w", "rescue", []string{watched + "/**"}), rescued),
		"  min_free: 1%", "  min_free: 1%\n  cross_fs: true\n  follow: false", 1)
	d := startDaemon(t, writeConfig(t, cfg))
	const trials = 5
	caught := 0
	for i := range trials {
		name := fmt.Sprintf("young-%d.log", i)
		cmd := exec.Command("unshare", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c", youngContainer)
		cmd.Env = append(cmd.Environ(), "DIR="+app, "NAME="+name)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("container %d: %v: %s", i, err, out)
		}
		if ev := d.waitOptional(Rescued(filepath.Join(app, name)), 5*time.Second); ev != nil {
			caught++
			if sha(t, ev.str("rescued_to")) != shaBytes([]byte(strings.Repeat("young container\n", 100))) {
				t.Errorf("container %d: rescued content differs", i)
			}
		} else {
			t.Logf("container %d: not caught", i)
		}
	}
	// Each is caught unless the machine stalls the daemon for longer than
	// the holder's last 50 ms; without the walk after the mount, none is.
	if caught < trials-1 {
		t.Errorf("caught %d of %d young containers' files, want at least %d", caught, trials, trials-1)
	}
}
