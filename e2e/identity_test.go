package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
)

// TestSwappedDescriptorAttack is the attack of issue 10 against the real
// daemon. An unprivileged user (uid 65534) creates and unlinks x_K in a
// watched directory, one after the other, and while each is open flips
// one descriptor number between it and a root-owned 0644 file outside
// every rule (dup2(2), as fast as it can). A sweep reads a descriptor's
// name and its inode in two calls, so it keeps seeing the watched deleted
// name with the decoy's inode; the daemon must pin, match and charge only
// the file behind its own descriptor. Afterwards no rescued file is the
// decoy (by inode, by link count, by content), every rescue is an x_K or
// root's own file, and the per-user quota (one file) was never charged to
// root: root's own deleted file is still rescued.
func TestSwappedDescriptorAttack(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 256)
	testfs.Reachable(t, mnt)
	watched, rescued := filepath.Join(mnt, "w"), filepath.Join(mnt, "rescued")
	mkdirs(t, watched, filepath.Join(mnt, "etc"))
	if err := os.Chmod(watched, 0o777); err != nil {
		t.Fatal(err)
	}
	decoy := filepath.Join(mnt, "etc", "decoy")
	secret := []byte("root's file, outside every rule\n")
	if err := os.WriteFile(decoy, secret, 0o644); err != nil {
		t.Fatal(err)
	}
	var dst syscall.Stat_t
	if err := syscall.Stat(decoy, &dst); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`scan:
  interval: 1s
  events: true
watch:
%s
rescue:
  dirs: [%q]
  min_free: 1%%
  max_file_size: 0
  max_total_size: 0
  per_user:
    max_files: 1
    max_bytes: 0
log:
  level: debug
`, rule("w", "rescue", []string{watched + "/**"}), rescued)
	d := startDaemon(t, writeConfig(t, cfg))

	const files, each = 9000, 2 * time.Millisecond
	start := time.Now()
	h := testproc.StartWith(t, testproc.Options{UID: 65534, GID: 65534},
		testproc.Ready(), testproc.Swapper(watched, decoy, files, each, 0), testproc.Exit())
	select {
	case <-h.Done():
	case <-time.After(5 * time.Minute):
		t.Fatal("the attacker did not finish")
	}
	attack := time.Since(start)

	// Root's own file, deleted while open in the watched directory.
	own := filepath.Join(watched, "root.log")
	holdFile(t, own, content(own, 4000))
	d.Wait("root's own file rescued", 30*time.Second, func(e Event) bool {
		return e.str("path") == own && (e.Msg() == "file rescued" || e.Msg() == "rescue skipped" || e.Msg() == "rescue failed")
	})
	if ev := d.Events(Rescued(own)); len(ev) != 1 {
		t.Errorf("root's own file: %d file rescued events, want 1 (quota charged to root?): %v", len(ev), d.Events(About(own)))
	}

	// The daemon's looks at the flipped descriptor that reported it as
	// deleted (a look that found the decoy itself sees a live file, and
	// one that found an x_K already queued through the attacker's other
	// descriptor is a known inode): each ends in a refused pin or in a
	// pinned x_K (rescued, or skipped by the attacker's own quota).
	pid := float64(h.PID)
	atSwap := func(e Event) bool { return e["pid"] == pid && e["fd"] == float64(testproc.SwapFD) }
	var refused, pinned int
	for _, e := range d.Events(atSwap) {
		switch e.Msg() {
		case "pin: candidate gone":
			refused++
		case "file rescued", "rescue skipped", "no watch rule matches the pinned file":
			pinned++
			if p := e.str("path"); !strings.HasPrefix(p, watched+"/x_") {
				t.Errorf("%s for %q", e.Msg(), p)
			}
		}
	}
	for _, e := range d.Events(Msg("file rescued")) {
		if p := e.str("path"); p != own && !strings.HasPrefix(p, watched+"/x_") {
			t.Errorf("rescued %q", p)
		}
	}

	// Not one hard link to the decoy, not one copy of it.
	if err := syscall.Stat(decoy, &dst); err != nil {
		t.Fatal(err)
	}
	if dst.Nlink != 1 {
		t.Errorf("the decoy has %d links, want 1", dst.Nlink)
	}
	files0 := regularFiles(t, rescued)
	for _, f := range files0 {
		var st syscall.Stat_t
		if err := syscall.Stat(f, &st); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Dev == dst.Dev && st.Ino == dst.Ino || bytes.Equal(b, secret) {
			t.Errorf("%s is the decoy (ino %d, %q)", f, st.Ino, b)
		}
	}
	t.Logf("%d files flipped in %v; the daemon looked at the flipped descriptor %d times: %d pins refused, %d pinned (all x_K); %d files rescued, 0 of them the decoy",
		files, attack.Round(time.Millisecond), refused+pinned, refused, pinned, len(files0))
	if refused+pinned < 1000 || refused == 0 {
		t.Errorf("the attack was not exercised: %d looks, %d refused", refused+pinned, refused)
	}
}
