package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testfs"
)

// alreadyRescued matches "already rescued" events for path.
func alreadyRescued(path string) func(Event) bool {
	return func(e Event) bool { return e.Msg() == "already rescued" && e.str("path") == path }
}

// fullSweeps waits until the daemon has logged n full sweeps.
func (d *Daemon) fullSweeps(n int, timeout time.Duration) {
	d.t.Helper()
	d.WaitCount("full sweep", n, timeout, func(e Event) bool { return e.Msg() == "sweep" && e.str("kind") == "full" })
}

// waitGrown waits until path is larger than size and returns its size.
func waitGrown(t *testing.T, path string, size int64) int64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > size {
			return fi.Size()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not grow past %d bytes", path, size)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRestartHeldFile: a daemon restarted while a file it rescued is still
// held (SIGTERM as systemctl restart does, SIGKILL as the watchdog does)
// does not copy it again: after each of three restarts the rescue root
// holds the one copy, the new daemon logs "already rescued" for it once
// and "file rescued" never. Both kinds of root are read at start-up: a
// configured rescue directory, and the fs_dir root of the file's mount,
// which only the host's mount table names after a restart.
func TestRestartHeldFile(t *testing.T) {
	testfs.RequireRoot(t)
	for _, kind := range []string{"rescue.dirs", "fs_dir"} {
		t.Run(kind, func(t *testing.T) {
			mnt := testfs.Mount(t, "ext4", 64)
			watched := filepath.Join(mnt, "w")
			mkdirs(t, watched)
			dirs, root := filepath.Join(mnt, "rescued"), filepath.Join(mnt, "rescued")
			if kind == "fs_dir" {
				// The only configured directory is on another
				// filesystem: the file goes to its own mount's .relinkd.
				dirs, root = filepath.Join(testfs.Mount(t, "tmpfs", 16), "rescued"), filepath.Join(mnt, ".relinkd")
			}
			cfg := writeConfig(t, baseConfig("1s", true, rule("w", "rescue", []string{watched + "/**"}), dirs))
			d := startDaemon(t, cfg)
			p := filepath.Join(watched, "held.log")
			data := content("held", 1<<20)
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
			// Read-only: nothing to follow, the rescue is complete.
			h := startShell(t, `exec 3<"$1"; rm "$1"; echo ready; exec sleep 600`, p)
			ev := d.Wait("file rescued", 30*time.Second, Rescued(p))
			to := ev.str("rescued_to")
			if !strings.HasPrefix(to, root+"/") || !slices.Equal(regularFiles(t, root), []string{to}) {
				t.Fatalf("rescued to %s; %s holds %q", to, root, regularFiles(t, root))
			}
			for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL, syscall.SIGTERM} {
				d.Signal(sig)
				d.WaitExit(10 * time.Second)
				d = startDaemon(t, cfg)
				ar := d.Wait("already rescued", 30*time.Second, alreadyRescued(p))
				// Two more full sweeps must not change anything.
				d.fullSweeps(3, 30*time.Second)
				what := fmt.Sprintf("restart %d (%v)", i+1, sig)
				if ar.str("rescued_to") != to || ar.num("pid") != int64(h.PID()) || ar["follow"] != false {
					t.Errorf("%s: already rescued %v, want rescued_to %s, pid %d, follow false", what, ar, to, h.PID())
				}
				if n := len(d.Events(Msg("already rescued"))); n != 1 {
					t.Errorf("%s: %d already rescued events, want 1", what, n)
				}
				if evs := d.Events(Msg("file rescued")); len(evs) != 0 {
					t.Errorf("%s: rescued again: %v", what, evs)
				}
				if files := regularFiles(t, root); !slices.Equal(files, []string{to}) {
					t.Errorf("%s: %s holds %q, want only %s", what, root, files, to)
				}
			}
			if sha(t, to) != shaBytes(data) {
				t.Error("the rescued file's content changed")
			}
		})
	}
}

// TestRestartDuringFollow: a daemon restarted while it follows a file
// whose writer keeps appending hands the follow to the next daemon: the
// same rescued file keeps growing after the restart and ends with
// everything the writer wrote ("follow finished"), and no second copy is
// made. SIGKILL (the watchdog) leaves the follow unfinished on disk;
// SIGTERM stops it cleanly ("follow stopped", reason shutdown).
func TestRestartDuringFollow(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "python3")
	// The writer mirrors every byte into a file of its own, the content
	// the rescued file must end with; it stops when the stop file exists.
	const writer = `
import os, sys, time
p, mirror, stop = sys.argv[1:4]
f = open(p, "ab", buffering=0)
m = open(mirror, "wb", buffering=0)
def w(b):
    f.write(b)
    m.write(b)
w(b"start\n")
os.unlink(p)
print("ready", flush=True)
i = 0
while not os.path.exists(stop):
    w(("chunk %d %s\n" % (i, "x" * 1000)).encode())
    i += 1
    time.sleep(0.05)
w(b"end\n")
f.close()
m.close()
`
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			mnt := testfs.Mount(t, "ext4", 64)
			watched, rescued := filepath.Join(mnt, "w"), filepath.Join(mnt, "rescued")
			mkdirs(t, watched)
			cfg := writeConfig(t, baseConfig("1h", true, rule("w", "rescue", []string{watched + "/**"}), rescued))
			d := startDaemon(t, cfg)
			tmp := t.TempDir()
			p, mirror, stop := filepath.Join(watched, "grow.log"), filepath.Join(tmp, "mirror"), filepath.Join(tmp, "stop")
			w := startProg(t, "python3", "-c", writer, p, mirror, stop)
			ev := d.Wait("file rescued", 30*time.Second, Rescued(p))
			to := ev.str("rescued_to")
			// The first daemon is following: the copy grows.
			waitGrown(t, to, ev.num("bytes"))

			d.Signal(sig)
			d.WaitExit(10 * time.Second)
			if sig == syscall.SIGTERM {
				if evs := d.Events(Msg("follow stopped")); len(evs) != 1 || evs[0].str("reason") != "shutdown" {
					t.Errorf("follow stopped events at SIGTERM: %v, want one, reason shutdown", evs)
				}
			}
			fi, err := os.Stat(to)
			if err != nil {
				t.Fatal(err)
			}
			d = startDaemon(t, cfg)
			ar := d.Wait("already rescued", 30*time.Second, alreadyRescued(p))
			if ar.str("rescued_to") != to || ar["follow"] != true {
				t.Errorf("already rescued %v, want rescued_to %s, follow true", ar, to)
			}
			// The same file keeps growing under the new daemon.
			waitGrown(t, to, fi.Size())
			if err := os.WriteFile(stop, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			w.Wait(t)
			fin := d.Wait("follow finished", 30*time.Second, func(e Event) bool {
				return e.Msg() == "follow finished" && e.str("path") == p
			})
			want, err := os.ReadFile(mirror)
			if err != nil {
				t.Fatal(err)
			}
			if fin.str("rescued_to") != to || fin.num("bytes") != int64(len(want)) {
				t.Errorf("follow finished %v, want %d bytes into %s", fin, len(want), to)
			}
			if got := sha(t, to); got != shaBytes(want) {
				t.Errorf("the rescued file (%d bytes at the restart) differs from what the writer wrote (%d bytes)", fi.Size(), len(want))
			}
			if evs := d.Events(Msg("file rescued")); len(evs) != 0 {
				t.Errorf("rescued again after the restart: %v", evs)
			}
			if files := regularFiles(t, rescued); !slices.Equal(files, []string{to}) {
				t.Errorf("%s holds %q, want only %s", rescued, files, to)
			}
		})
	}
}

// TestRestartPrunesFSDir: retention covers the fs_dir root of every
// mounted filesystem from start-up, not only once a rescue has used it:
// a daemon started over a .relinkd root that earlier daemons filled past
// rescue.max_total_size prunes it at once.
func TestRestartPrunesFSDir(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "ext4", 64)
	root := filepath.Join(mnt, ".relinkd")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	// What an earlier daemon left: a rescued file and its sidecar, 2 MiB.
	old := filepath.Join(root, "app.log.20200101T000000Z.pid1.fd3")
	if err := os.WriteFile(old, content("old", 2<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(old+".relinkd.json", []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	watched := filepath.Join(mnt, "w")
	mkdirs(t, watched)
	other := filepath.Join(testfs.Mount(t, "tmpfs", 16), "rescued")
	yaml := strings.Replace(baseConfig("1h", true, rule("w", "rescue", []string{watched + "/**"}), other),
		"max_total_size: 0", "max_total_size: 1MiB", 1)
	d := startDaemon(t, writeConfig(t, yaml))
	ev := d.Wait("prune of "+root, 30*time.Second, func(e Event) bool {
		return e.Msg() == "rescued files pruned" && e.str("root") == root
	})
	if ev.num("removed") != 1 {
		t.Errorf("pruned %v, want the one rescued file removed", ev)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("%s still there after the prune (%v)", old, err)
	}
}

// restartHostViewScript runs as PID 1 of a new PID and mount namespace
// (the "host"), like hostViewScript: a daemon in a read-only copy of the
// host's mount namespace rescues a file on $SRV and one on a filesystem
// mounted after it started; it is killed, and a second daemon starts in a
// copy where that later filesystem is not mounted at all. It prints both
// daemons' logs, prefixed LOG1 and LOG2.
const restartHostViewScript = `
set -eu
mount -t tmpfs -o size=32m,mode=0755 tmpfs "$SRV"
mkdir "$SRV/data"
head -c 300000 /dev/urandom > "$SRV/data/b.log"
# exec: $! is then the daemon itself (unshare and sh exec in turn).
sandbox() { exec unshare --mount --propagation private sh -c "mount -o remount,bind,ro \"$SRV\" && $1 exec \"$BIN\" run --config \"$CFG\""; }
sandbox "" 2> "$OUT/d1.log" &
d1=$!
for i in $(seq 200); do grep -q '"relinkd started"' "$OUT/d1.log" 2>/dev/null && break; sleep 0.05; done
mkdir -p "$SRV/late"
mount -t tmpfs -o size=8m,mode=0755 tmpfs "$SRV/late"
head -c 100000 /dev/urandom > "$SRV/late/c.log"
for f in data/b late/c; do
  python3 -c 'import os,sys,time
f = open(sys.argv[1], "rb"); os.unlink(sys.argv[1]); time.sleep(30)' "$SRV/$f.log" &
done
for i in $(seq 300); do [ "$(grep -c '"file rescued"' "$OUT/d1.log")" -ge 2 ] && break; sleep 0.05; done
kill -KILL $d1; wait $d1 || true
sandbox "umount \"$SRV/late\" &&" 2> "$OUT/d2.log" &
d2=$!
for i in $(seq 200); do grep -q '"relinkd started"' "$OUT/d2.log" 2>/dev/null && break; sleep 0.05; done
if grep -q " $SRV/late " /proc/$d2/mountinfo; then echo "SANDBOX: the second daemon sees $SRV/late"; fi
for i in $(seq 300); do [ "$(grep -c '"already rescued"' "$OUT/d2.log")" -ge 2 ] && break; sleep 0.05; done
sleep 0.5
kill -TERM $d2; wait $d2 || true
sed 's/^/LOG1 /' "$OUT/d1.log"
sed 's/^/LOG2 /' "$OUT/d2.log"
`

// TestRestartHostView: under a sandbox like the unit's, a restarted
// daemon finds what the previous one rescued through the host's view
// (/proc/1/root and PID 1's mount table), also on a filesystem its own
// mount namespace does not show: "already rescued" for both files, no
// second copy.
func TestRestartHostView(t *testing.T) {
	dir := t.TempDir()
	srv := filepath.Join(dir, "srv")
	out := runHostScenario(t, dir, srv, restartHostViewScript, 90*time.Second)
	events := map[string][]Event{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "SANDBOX: ") {
			t.Fatalf("the sandbox stand-in did not work: %s", line)
		}
		for _, pfx := range []string{"LOG1 ", "LOG2 "} {
			var ev Event
			if s, ok := strings.CutPrefix(line, pfx); ok && json.Unmarshal([]byte(s), &ev) == nil {
				events[pfx] = append(events[pfx], ev)
			}
		}
	}
	count := func(log, msg string) map[string]string {
		got := map[string]string{}
		for _, ev := range events[log] {
			if ev.Msg() == msg {
				got[filepath.Base(ev.str("path"))] = ev.str("rescued_to")
			}
		}
		return got
	}
	for _, ev := range events["LOG1 "] {
		if ev.Msg() == "relinkd stopping" {
			t.Fatalf("the first daemon was stopped, not killed:\n%s", out)
		}
	}
	for _, ev := range events["LOG2 "] {
		if ev.Msg() == "relinkd started" && ev.str("host_root") == "/" {
			t.Errorf("the restarted daemon did not find the host's namespace: %v", ev)
		}
	}
	first, again, second := count("LOG1 ", "file rescued"), count("LOG2 ", "already rescued"), count("LOG2 ", "file rescued")
	if len(first) != 2 {
		t.Fatalf("first daemon rescued %v, want b.log and c.log:\n%s", first, out)
	}
	for name, to := range first {
		if again[name] != to {
			t.Errorf("%s: the restarted daemon says already rescued to %q, want %s", name, again[name], to)
		}
	}
	if len(again) != 2 || len(second) != 0 {
		t.Errorf("restarted daemon: already rescued %v, rescued again %v; want both already rescued, none again:\n%s", again, second, out)
	}
}
