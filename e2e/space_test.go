package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testfs"
)

// TestCopyDoesNotFit: a file whose copy does not fit is `rescue skipped`,
// reason space, at info level (no `rescue failed`, no retry on every
// sweep); once space returns, the next sweep rescues it.
func TestCopyDoesNotFit(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "ext4", 64)
	watched, rescued := filepath.Join(mnt, "w"), filepath.Join(mnt, "rescued")
	mkdirs(t, watched)
	filler := filepath.Join(mnt, "filler")
	if err := os.WriteFile(filler, make([]byte, 30<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(baseConfig("1s", true, rule("w", "rescue", []string{watched + "/**"}), rescued),
		"  min_free: 1%", "  min_free: 1%\n  follow: false", 1)
	d := startDaemon(t, writeConfig(t, cfg))
	big := filepath.Join(watched, "big.log")
	data := content(big, 20<<20)
	holdFile(t, big, data)
	ev := d.Wait("rescue skipped (space)", 15*time.Second, func(e Event) bool {
		return e.Msg() == "rescue skipped" && e.str("path") == big
	})
	if ev.str("reason") != "space" || ev.str("level") != "info" {
		t.Errorf("skip: reason %q level %q, want space/info: %v", ev.str("reason"), ev.str("level"), ev)
	}
	// Several sweeps later: still one skip, no failure.
	full := func(e Event) bool { return e.Msg() == "sweep" && e.str("kind") == "full" }
	d.WaitCount("three more sweeps", len(d.Events(full))+3, 15*time.Second, full)
	if n := len(d.Events(func(e Event) bool { return e.Msg() == "rescue skipped" && e.str("path") == big })); n != 1 {
		t.Errorf("%d rescue skipped events while the space is missing, want 1", n)
	}
	if n := len(d.Events(Msg("rescue failed"))); n != 0 {
		t.Errorf("%d rescue failed events, want 0", n)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	got := d.Wait("rescued once space returned", 15*time.Second, Rescued(big))
	if sha(t, got.str("rescued_to")) != shaBytes(data) {
		t.Error("rescued content differs")
	}
}
