package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testfs"
)

// holdMany opens every file named in argv read-only, deletes them all,
// says ready and holds them until its stdin closes.
const holdMany = `
import os, sys
fds = [os.open(p, os.O_RDONLY) for p in sys.argv[1:]]
for p in sys.argv[1:]:
    os.unlink(p)
print("ready", flush=True)
sys.stdin.read()
`

// TestThousandFiles: 1,000 files deleted at once across 100 processes are
// all rescued, each exactly once, and later sweeps repeat nothing.
func TestThousandFiles(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "python3")
	const procs, perProc = 100, 10
	mnt := testfs.Mount(t, "tmpfs", 256)
	watched, rescued := filepath.Join(mnt, "w"), filepath.Join(mnt, "rescued")
	mkdirs(t, watched)
	d := startDaemon(t, writeConfig(t, baseConfig("1s", true, rule("w", "rescue", []string{watched + "/**"}), rescued)))

	want := make(map[string]string, procs*perProc) // path -> sha
	for p := range procs {
		dir := filepath.Join(watched, fmt.Sprintf("p%03d", p))
		mkdirs(t, dir)
		var paths []string
		for f := range perProc {
			path := filepath.Join(dir, fmt.Sprintf("f%d.log", f))
			data := content(path, 1000+p*10+f)
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			want[path] = shaBytes(data)
			paths = append(paths, path)
		}
		startProg(t, "python3", append([]string{"-c", holdMany}, paths...)...)
	}

	evs := d.WaitCount("file rescued", len(want), 120*time.Second, Msg("file rescued"))
	seen := make(map[string]int)
	for _, e := range evs {
		seen[e.str("path")]++
	}
	for path, n := range seen {
		if n != 1 {
			t.Errorf("%s rescued %d times", path, n)
		}
		if _, ok := want[path]; !ok {
			t.Errorf("unexpected rescue of %s", path)
		}
	}
	for _, e := range evs {
		if w, ok := want[e.str("path")]; ok && sha(t, e.str("rescued_to")) != w {
			t.Errorf("%s: rescued content differs", e.str("path"))
		}
	}
	if len(seen) != len(want) {
		t.Errorf("%d distinct files rescued, want %d", len(seen), len(want))
	}

	// Two more full sweeps (1 s apart) see all 1,000 again and must not
	// repeat a single event.
	full := func(e Event) bool { return e.Msg() == "sweep" && e.str("kind") == "full" }
	n := len(d.Events(full))
	d.WaitCount("two more full sweeps", n+2, 30*time.Second, full)
	if got := len(d.Events(Msg("file rescued"))); got != len(want) {
		t.Errorf("%d file rescued events after more sweeps, want %d", got, len(want))
	}
	if got := len(d.Events(Msg("rescue failed"))); got != 0 {
		t.Errorf("%d rescue failed events", got)
	}
}
