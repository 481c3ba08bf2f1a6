package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testfs"
)

// scriptedHolder is a long-running process driven by its stdin: "open P"
// opens P for writing (creating it), "write P DATA" appends a line,
// "gone P MS" deletes P and exits MS milliseconds later. It says "ready"
// at start and "ok" after each command.
const scriptedHolder = `
import os, sys, time
fds = {}
print("ready", flush=True)
for line in sys.stdin:
    cmd, path, *rest = line.split()
    if cmd == "open":
        fds[path] = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    elif cmd == "write":
        os.write(fds[path], (" ".join(rest) + "\n").encode())
    elif cmd == "gone":
        os.unlink(path)
        time.sleep(int(rest[0]) / 1000)
        os._exit(0)
    print("ok", flush=True)
`

func (s *Shell) do(t *testing.T, cmd string) {
	t.Helper()
	if _, err := fmt.Fprintln(s.in, cmd); err != nil {
		t.Fatal(err)
	}
}

// TestOldHolder: processes that have been running since before the daemon
// started are found by the event path within milliseconds, sweeps an hour
// apart: one whose file was open at the daemon's first sweep (the holder
// index knows it held files in that directory), and one that opened its
// file only later (the file's creation starts a pass over every process,
// off the main loop, which puts it in the index before the unlink).
func TestOldHolder(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "python3")
	mnt := testfs.Mount(t, "ext4", 64)
	watched, rescued := filepath.Join(mnt, "w"), filepath.Join(mnt, "rescued")
	mkdirs(t, watched)
	early := filepath.Join(watched, "early.log")
	old := startProg(t, "python3", "-c", scriptedHolder)
	old.do(t, "open "+early)
	old.do(t, "write "+early+" written before the daemon started")
	late := startProg(t, "python3", "-c", scriptedHolder)
	// Other processes started after the old ones, as on a real host.
	for range 20 {
		startProg(t, "python3", "-c", scriptedHolder)
	}
	time.Sleep(100 * time.Millisecond) // the commands above are done
	d := startDaemon(t, writeConfig(t, baseConfig("1h", true, rule("w", "rescue", []string{watched + "/**"}), rescued)))

	old.do(t, "gone "+early+" 5")
	ev := d.Wait("old holder's file rescued", 10*time.Second, Rescued(early))
	if b, err := os.ReadFile(ev.str("rescued_to")); err != nil || string(b) != "written before the daemon started\n" {
		t.Errorf("rescued content %q, %v", b, err)
	}

	// Later, as a server reopens its log after a rotation: longer after
	// the last full pass (the one the unlink above asked for, at the end
	// of the full-pass gap: 5 s with sweeps an hour apart) than that gap,
	// so that the file's creation may start a pass at once.
	full := func(e Event) bool { return e.Msg() == "sweep" && e.str("kind") == "full" }
	d.WaitCount("the deferred full pass", 2, 15*time.Second, full)
	time.Sleep(5500 * time.Millisecond)
	lateFile := filepath.Join(watched, "late.log")
	late.do(t, "open "+lateFile)
	late.do(t, "write "+lateFile+" opened after the first sweep")
	time.Sleep(50 * time.Millisecond)
	late.do(t, "gone "+lateFile+" 5")
	d.Wait("late holder's file rescued", 10*time.Second, Rescued(lateFile))
}
