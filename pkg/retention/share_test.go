package retention

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testfs"
)

// TestPruneOverShare: when a root is over max_total_size, the oldest
// files of owners over their share go first, even if another owner's
// file is older.
func TestPruneOverShare(t *testing.T) {
	testfs.RequireRoot(t)
	root := filepath.Join(t.TempDir(), "rescue")
	old := filepath.Join(root, "var/log/app.log.20261121T203000Z.pid1.fd3")
	writeOwned(t, old, 1000, 0)
	time.Sleep(20 * time.Millisecond) // distinct ctimes, the prune's order
	junk1 := filepath.Join(root, "tmp/j1.20261121T203001Z.pid2.fd3")
	junk2 := filepath.Join(root, "tmp/j2.20261121T203002Z.pid3.fd3")
	writeOwned(t, junk1, 3000, 1000)
	time.Sleep(20 * time.Millisecond)
	writeOwned(t, junk2, 3000, 1000)
	// 7,000 bytes, at most 4,500: one junk file must go; uid 1000 holds
	// 6,000, over a share of 2,000.
	res, err := Prune(root, 0, 4500, 2000, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if res.Removed != 1 {
		t.Fatalf("removed %d, want 1", res.Removed)
	}
	for path, want := range map[string]bool{old: true, junk1: false, junk2: true} {
		if _, err := os.Stat(path); (err == nil) != want {
			t.Errorf("%s present %v, want %v", path, err == nil, want)
		}
	}
	// Without a share, the oldest of anyone's go first: the old file,
	// then junk2 (junk1, written again, is now the newest).
	writeOwned(t, junk1, 3000, 1000)
	res, err = Prune(root, 0, 4500, 0, time.Now())
	if err != nil || res.Removed != 2 {
		t.Fatalf("no share: removed %d, %v; want 2", res.Removed, err)
	}
	if _, err := os.Stat(old); err == nil {
		t.Error("without a share the oldest file (uid 0) should have gone")
	}
}
