package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testfs"
)

// holdManyRW is holdMany with the files open for writing, so that every
// rescue is followed.
const holdManyRW = `
import os, sys
fds = [os.open(p, os.O_RDWR) for p in sys.argv[1:]]
for p in sys.argv[1:]:
    os.unlink(p)
print("ready", flush=True)
sys.stdin.read()
`

// TestFollowBurst: 200 processes hold 5,000 deleted files open for
// writing, with follow on (the default). More files than pins (4,096) and
// than follows: every file is rescued, exactly once, none lost to a
// budget, the budgets are said once each, and the daemon (built without
// the race detector) stays far below the unit's MemoryMax=256M.
func TestFollowBurst(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "python3")
	bin, err := plainBinary()
	if err != nil {
		t.Fatal(err)
	}
	const procs, perProc = 200, 25
	mnt := testfs.Mount(t, "tmpfs", 256)
	watched, rescued := filepath.Join(mnt, "w"), filepath.Join(mnt, "rescued")
	mkdirs(t, watched)
	cfg := strings.Replace(baseConfig("30s", true, rule("w", "rescue", []string{watched + "/**"}), rescued),
		"log:\n  level: debug", "log:\n  level: info", 1)
	d := startDaemonBinary(t, bin, writeConfig(t, cfg))

	start := time.Now()
	var holders []*Shell
	for p := range procs {
		dir := filepath.Join(watched, fmt.Sprintf("p%03d", p))
		mkdirs(t, dir)
		var paths []string
		for f := range perProc {
			path := filepath.Join(dir, fmt.Sprintf("f%d.log", f))
			if err := os.WriteFile(path, content(path, 200), 0o644); err != nil {
				t.Fatal(err)
			}
			paths = append(paths, path)
		}
		holders = append(holders, startProg(t, "python3", append([]string{"-c", holdManyRW}, paths...)...))
	}
	evs := d.WaitCount("file rescued", procs*perProc, 120*time.Second, Msg("file rescued"))
	took := time.Since(start)
	hwm := vmHWM(t, d.cmd.Process.Pid)
	seen := make(map[string]int)
	for _, e := range evs {
		seen[e.str("path")]++
	}
	if len(seen) != procs*perProc {
		t.Errorf("%d distinct files rescued, want %d", len(seen), procs*perProc)
	}
	for path, n := range seen {
		if n != 1 {
			t.Errorf("%s rescued %d times", path, n)
		}
	}
	for _, msg := range []string{"follow budget reached"} {
		if n := len(d.Events(Msg(msg))); n != 1 {
			t.Errorf("%q said %d times, want once for the burst", msg, n)
		}
	}
	for _, h := range holders {
		h.in.Close()
	}
	d.WaitCount("follows finished", followBudget, 60*time.Second, Msg("follow finished"))
	t.Logf("%d files rescued in %v; peak RSS %d MiB", len(seen), took.Round(time.Millisecond), hwm>>20)
	if hwm > 128<<20 {
		t.Errorf("peak RSS %d MiB during the burst, want well under the unit's MemoryMax=256M (at most 128 MiB)", hwm>>20)
	}
}

// followBudget is the daemon's default bound on files followed at once
// (daemon.DefaultMaxFollows).
const followBudget = 256

// vmHWM is the peak resident set size of pid (proc(5) VmHWM), in bytes.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}
