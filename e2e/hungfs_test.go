package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testfuse"
)

// holdOne opens FILE read-write, deletes it, says ready and holds it
// until its stdin closes.
const holdOne = `
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.unlink(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
`

// TestHungFilesystem: a FUSE server that stops answering (getattr, then
// open, then read) while processes hold deleted files on it never stalls
// the daemon: READY=1 comes at start-up, the filesystem is reported
// unresponsive with its mount point, the watchdog is fed, a file deleted
// on ext4 meanwhile is rescued, SIGHUP and SIGTERM are answered; once the
// server answers again its file is rescued too; a copy stuck in a read
// gets its worker replaced while other files are still rescued; and
// `relinkd scan` finishes and lists what it could not inspect.
func TestHungFilesystem(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "python3")
	mnt := testfs.Mount(t, "ext4", 64)
	watched, rescued := filepath.Join(mnt, "w"), filepath.Join(mnt, "rescued")
	mkdirs(t, watched)
	fuseDir := t.TempDir()
	srv := testfuse.MountWith(t, fuseDir, testfuse.Options{DirectIO: true})

	hold := func(path string, data []byte) *Shell {
		t.Helper()
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return startProg(t, "python3", "-c", holdOne, path)
	}
	heldData := content("held", 100_000)
	hold(filepath.Join(fuseDir, "held.log"), heldData)
	srv.Hang(testfuse.OpGetattr)

	// relinkd scan, meanwhile: it finishes its listing, naming the file
	// it could not confirm. (The process itself exits only once the
	// stuck thread returns: no thread waiting in the kernel on a FUSE
	// request the server has read can be killed.)
	scan := exec.Command(binary, "scan", "--all")
	stderr, err := scan.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := scan.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Abort(); _ = scan.Process.Kill(); _ = scan.Wait() })
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var unanswered, summary bool
	timeout := time.After(20 * time.Second)
	for !summary {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("scan ended without its summary")
			}
			t.Logf("scan: %s", l)
			unanswered = unanswered || strings.Contains(l, "not answering") && strings.Contains(l, filepath.Join(fuseDir, "held.log"))
			summary = strings.Contains(l, "deleted-but-open file(s)")
		case <-timeout:
			t.Fatal("relinkd scan did not finish its listing in 20 s with a filesystem not answering")
		}
	}
	if !unanswered {
		t.Error("relinkd scan did not list the file it could not inspect")
	}

	cfg := strings.Replace(baseConfig("1s", true,
		rule("w", "rescue", []string{watched + "/**"})+rule("fuse", "rescue", []string{fuseDir + "/**"}), rescued),
		"  min_free: 1%", "  min_free: 1%\n  fs_dir: \"\"\n  cross_fs: true\n  follow: false", 1)
	cfg = strings.Replace(cfg, "scan:\n", "scan:\n  fs_timeout: 500ms\n  stall_timeout: 2s\n", 1)
	start := time.Now()
	d := startDaemon(t, writeConfig(t, cfg), "WATCHDOG_USEC=400000")
	// Registered after the daemon's: runs first, so that the daemon's
	// threads stuck on the server can return and it can exit.
	t.Cleanup(srv.Abort)
	t.Logf("READY=1 after %v with the filesystem not answering", time.Since(start).Round(time.Millisecond))
	down := func(e Event) bool { return e.Msg() == "filesystem unresponsive" && e.str("mountpoint") == fuseDir }
	ev := d.Wait("filesystem unresponsive", 10*time.Second, down)
	if !strings.HasPrefix(ev.str("fstype"), "fuse") {
		t.Errorf("fstype %q, want fuse", ev.str("fstype"))
	}

	a := filepath.Join(watched, "a.log")
	hold(a, content(a, 5000))
	d.Wait("ext4 file rescued while FUSE hangs", 10*time.Second, Rescued(a))
	d.Signal(syscall.SIGHUP)
	d.Wait("reload while FUSE hangs", 10*time.Second, Msg("config reloaded"))
	watchdogs := func() int {
		d.mu.Lock()
		defer d.mu.Unlock()
		n := 0
		for _, s := range d.notes {
			if s == "WATCHDOG=1" {
				n++
			}
		}
		return n
	}
	before := watchdogs()
	d.waitFor("more WATCHDOG=1", 5*time.Second, func() bool {
		n := 0
		for _, s := range d.notes {
			if s == "WATCHDOG=1" {
				n++
			}
		}
		return n >= before+3
	})

	// The server answers again: the stuck call returns, the mount is
	// back, its file is rescued (by copy, onto ext4).
	srv.Resume()
	d.Wait("filesystem responsive again", 10*time.Second, func(e Event) bool {
		return e.Msg() == "filesystem responsive again" && e.str("mountpoint") == fuseDir
	})
	held := filepath.Join(fuseDir, "held.log")
	if got := sha(t, d.Wait("FUSE file rescued", 15*time.Second, Rescued(held)).str("rescued_to")); got != shaBytes(heldData) {
		t.Error("rescued FUSE file differs")
	}

	// A copy stuck in a read: the worker is replaced, the mount marked,
	// other files still rescued.
	srv.Hang(testfuse.OpRead)
	big := filepath.Join(fuseDir, "big.log")
	hold(big, content("big", 300_000))
	d.Wait("rescue stalled", 20*time.Second, Msg("rescue stalled"))
	b := filepath.Join(watched, "b.log")
	hold(b, content(b, 5000))
	d.Wait("ext4 file rescued while a worker is stuck", 10*time.Second, Rescued(b))
	if n := len(d.Events(func(e Event) bool { return e.Msg() == "file rescued" && e.str("path") == big })); n != 0 {
		t.Errorf("the stuck file was reported rescued %d times", n)
	}

	d.Signal(syscall.SIGTERM)
	d.Wait("stopped with a worker stuck", 10*time.Second, Msg("relinkd stopped"))
	srv.Abort()
	if err := d.WaitExit(10 * time.Second); err != nil {
		t.Logf("exit: %v", err)
	}
}
