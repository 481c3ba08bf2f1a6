package e2e

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testfs"
)

// forkStorm forks children at rate per second, n in all; each starts up
// (sleeps startup, as an exec'd program would), writes DIR/f<i>, deletes
// it while holding it open and exits linger later.
const forkStorm = `
import os, sys, time
d, n, rate, startup, linger = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
start = time.monotonic()
for i in range(n):
    pause = start + i / rate - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    if os.fork() == 0:
        time.sleep(startup)
        p = os.path.join(d, "f%d" % i)
        f = open(p, "w+b")
        f.write(b"child %d\n" % i * 64)
        f.flush()
        os.unlink(p)
        time.sleep(linger)
        os._exit(0)
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
`

// TestForkStorm: children of a fork storm (100 forks/s, each starting up
// for 50 ms, then creating and deleting a file and exiting 20 ms later) are found by the event path
// with sweeps an hour apart. A pid stays "new" for a while after its fork,
// so a sibling's unlink that triggers the round before this child deleted
// anything does not use up its chance.
func TestForkStorm(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "python3")
	mnt := testfs.Mount(t, "ext4", 64)
	watched, rescued := filepath.Join(mnt, "w"), filepath.Join(mnt, "rescued")
	mkdirs(t, watched)
	d := startDaemon(t, writeConfig(t, baseConfig("1h", true, rule("w", "rescue", []string{watched + "/**"}), rescued)))
	const n = 300
	start := time.Now()
	out, err := exec.Command("python3", "-c", forkStorm, watched, strconv.Itoa(n), "100", "0.05", "0.02").CombinedOutput()
	if err != nil {
		t.Fatalf("fork storm: %v\n%s", err, out)
	}
	took := time.Since(start)
	time.Sleep(2 * time.Second) // rescues in flight finish
	got := 0
	for i := range n {
		if len(d.Events(Rescued(filepath.Join(watched, "f"+strconv.Itoa(i))))) > 0 {
			got++
		}
	}
	t.Logf("fork storm: %d children in %v, %d rescued", n, took.Round(time.Millisecond), got)
	// A 2-core CI machine running other tests beside this one delays
	// the race-built daemon now and then by more than the 20 ms a child
	// lives (238 of 300 seen there, 292 quiet; 1 before young pids).
	if got < n*2/3 {
		t.Errorf("rescued %d of %d fork-storm children, want at least %d", got, n, n*2/3)
	}
}
