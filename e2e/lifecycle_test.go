package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testfs"
)

// TestReload: SIGHUP applies a valid configuration, and keeps the running
// one when the new file is invalid, logging every error.
func TestReload(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 64)
	a, b, rescued := filepath.Join(mnt, "a"), filepath.Join(mnt, "b"), filepath.Join(mnt, "rescued")
	mkdirs(t, filepath.Join(a, "x"), filepath.Join(a, "y"), filepath.Join(b, "z"))
	const listen = "metrics:\n  listen: \"127.0.0.1:0\"\n"
	cfgA := baseConfig("1h", true, rule("a", "rescue", []string{a + "/**"}), rescued) + listen
	cfgB := baseConfig("1h", true, rule("b", "rescue", []string{b + "/**"}), rescued) + listen
	cfg := writeConfig(t, cfgA)
	d := startDaemon(t, cfg)
	addr := d.Wait("metrics listening", 5*time.Second, Msg("metrics listening")).str("listen")
	if got := metricValue(t, addr, "relinkd_inotify_watches"); got != 3 {
		t.Errorf("relinkd_inotify_watches = %v before the reload, want 3 (a, a/x, a/y)", got)
	}

	pa := filepath.Join(a, "1.log")
	holdFile(t, pa, []byte("a1"))
	d.Wait("rescue in a", 10*time.Second, Rescued(pa))

	if err := os.WriteFile(cfg, []byte(cfgB), 0o644); err != nil {
		t.Fatal(err)
	}
	d.Signal(syscall.SIGHUP)
	d.Wait("config reloaded", 10*time.Second, Msg("config reloaded"))
	// The watches are swapped before the event is logged: a's three are
	// gone, b's two are in place (five would mean a's were kept).
	if got := metricValue(t, addr, "relinkd_inotify_watches"); got != 2 {
		t.Errorf("relinkd_inotify_watches = %v after the reload, want 2 (b, b/z)", got)
	}
	pb := filepath.Join(b, "1.log")
	holdFile(t, pb, []byte("b1"))
	ev := d.Wait("rescue in b", 10*time.Second, Rescued(pb))
	if ev.str("rule") != "b" {
		t.Errorf("rule = %q, want b", ev.str("rule"))
	}
	// a is no longer covered: a file deleted there now, then one in b;
	// once the b one is rescued the sweep that found it also saw a's.
	pa2 := filepath.Join(a, "2.log")
	holdFile(t, pa2, []byte("a2"))
	pb2 := filepath.Join(b, "2.log")
	holdFile(t, pb2, []byte("b2"))
	d.Wait("rescue in b", 10*time.Second, Rescued(pb2))
	if evs := d.Events(About(pa2)); len(evs) > 0 {
		t.Errorf("%s rescued after a was dropped: %v", pa2, evs)
	}

	// An invalid file: two errors, both reported; b stays in force.
	bad := strings.Replace(cfgB, "scan:\n", "scan:\n  bogus: 1\n", 1)
	bad = strings.Replace(bad, "min_free: 1%", "min_free: lots", 1)
	if err := os.WriteFile(cfg, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	d.Signal(syscall.SIGHUP)
	fail := d.Wait("config reload failed", 10*time.Second, Msg("config reload failed"))
	errs, _ := fail["errors"].([]any)
	if len(errs) < 2 {
		t.Errorf("config reload failed lists %d errors, want 2: %v", len(errs), fail)
	}
	for _, e := range errs {
		if s, _ := e.(string); !strings.Contains(s, "relinkd.yaml:") {
			t.Errorf("error %q does not name file:line", s)
		}
	}
	pb3 := filepath.Join(b, "3.log")
	holdFile(t, pb3, []byte("b3"))
	d.Wait("rescue in b after a failed reload", 10*time.Second, Rescued(pb3))
	if n := len(d.Events(Msg("config reloaded"))); n != 1 {
		t.Errorf("%d config reloaded events, want 1", n)
	}
}

// bigHolder writes size bytes of real data (no holes) to path, and
// starts a holder that deletes it.
func bigHolder(t *testing.T, path string, size int64) *Shell {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for n := int64(0); n < size; n += int64(len(buf)) {
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Read-only: no follow, the copy is the only thing in flight.
	return startShell(t, `exec 3<"$1"; rm "$1"; echo ready; exec sleep 600`, path)
}

// copying waits until the daemon has an unnamed O_TMPFILE open under dir:
// a copy in progress (proc(5) shows it as DIR/#INO (deleted)).
func copying(t *testing.T, d *Daemon, dir string) {
	t.Helper()
	fdDir := "/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/fd"
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ents, _ := os.ReadDir(fdDir)
		for _, e := range ents {
			l, err := os.Readlink(filepath.Join(fdDir, e.Name()))
			if err == nil && strings.HasPrefix(l, dir+"/") && strings.Contains(l, "/#") && strings.HasSuffix(l, " (deleted)") {
				return
			}
		}
		if evs := d.Events(Msg("file rescued")); len(evs) > 0 {
			t.Fatalf("the copy finished before it was seen in progress: %v", evs[0])
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no copy in progress seen")
}

const bigSize = 1 << 30

// bigConfig rescues from watched; on ext4 the method is copy (no reflink,
// and a deleted file has no link left).
func bigConfig(watched, rescued string) string {
	return baseConfig("1h", true, rule("w", "rescue", []string{watched + "/**"}), rescued)
}

// TestSIGTERMDuringCopy: the daemon stops within 5 s in the middle of a
// large copy and leaves no partial file.
func TestSIGTERMDuringCopy(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "ext4", 3<<10)
	watched, rescued := filepath.Join(mnt, "w"), filepath.Join(mnt, "rescued")
	mkdirs(t, watched)
	d := startDaemon(t, writeConfig(t, bigConfig(watched, rescued)))
	bigHolder(t, filepath.Join(watched, "big.dat"), bigSize)
	copying(t, d, rescued)

	start := time.Now()
	d.Signal(syscall.SIGTERM)
	if err := d.WaitExit(10 * time.Second); err != nil {
		t.Errorf("exit: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("stopped after %v, want at most 5s", took)
	}
	d.WaitNote("STOPPING=1", time.Second)
	if len(d.Events(Msg("relinkd stopped"))) != 1 {
		t.Error("no relinkd stopped event")
	}
	if evs := d.Events(Msg("file rescued")); len(evs) > 0 {
		t.Errorf("rescued although stopped during the copy: %v", evs)
	}
	// Cancelled by design: not a failure.
	if evs := d.Events(Msg("rescue failed")); len(evs) > 0 {
		t.Errorf("a copy cancelled by shutdown was reported as failed: %v", evs)
	}
	if files := regularFiles(t, rescued); len(files) > 0 {
		t.Errorf("partial files left: %q", files)
	}
}

// TestSIGKILLDuringCopy: killed in the middle of a copy, the daemon leaves
// nothing behind; restarted, it rescues the file again while the holder
// lives.
func TestSIGKILLDuringCopy(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "ext4", 3<<10)
	watched, rescued := filepath.Join(mnt, "w"), filepath.Join(mnt, "rescued")
	mkdirs(t, watched)
	cfg := writeConfig(t, bigConfig(watched, rescued))
	d := startDaemon(t, cfg)
	p := filepath.Join(watched, "big.dat")
	h := bigHolder(t, p, bigSize)
	copying(t, d, rescued)
	d.Signal(syscall.SIGKILL)
	d.WaitExit(10 * time.Second)
	if files := regularFiles(t, rescued); len(files) > 0 {
		t.Fatalf("partial files left after SIGKILL: %q", files)
	}

	d2 := startDaemon(t, cfg)
	ev := d2.Wait("rescue after restart", 120*time.Second, Rescued(p))
	if got := ev.num("bytes"); got != bigSize {
		t.Errorf("bytes = %d, want %d", got, bigSize)
	}
	want := sha(t, "/proc/"+strconv.Itoa(h.PID())+"/fd/3")
	if got := sha(t, ev.str("rescued_to")); got != want {
		t.Error("rescued content differs from the holder's file")
	}
	if files := regularFiles(t, rescued); len(files) != 1 {
		t.Errorf("rescue dir holds %q, want exactly the rescued file", files)
	}
}
