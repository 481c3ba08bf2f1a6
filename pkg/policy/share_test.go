package policy

import (
	"path/filepath"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testlayout"
	"github.com/relinkd/relinkd/pkg/config"
)

func writeOwned(t *testing.T, path string, size int, uid int) {
	testlayout.WriteOwned(t, path, size, uid)
}

// TestMaxShare: per_user.max_share caps what one owner's rescued files
// hold in a root, counted on disk whatever the window: on a small
// filesystem an owner already holding a quarter is refused (quota) while
// another owner's file is still rescued. Root's files are not capped.
func TestMaxShare(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 16)
	root := filepath.Join(mnt, "rescue")
	writeOwned(t, filepath.Join(root, "srv/junk.20261121T203000Z.pid1.fd3"), 4<<20, 1000)

	c := candidate(t, holdDeleted(t, filepath.Join(mnt, "data/y.log"), 4096), 0)
	cfg := testConfig(root)
	cfg.Rescue.PerUser.MaxShare = config.Threshold{Percent: 25, IsPercent: true}
	p := New(cfg, zaptest.NewLogger(t))

	c.Owner = 0
	if d := p.Decide(c); d.Action != Rescue {
		t.Fatalf("uid 0 holding nothing: %v %s, want rescue", d.Action, d.Detail)
	}
	c2 := *c
	c2.Owner, c2.Ino = 1000, c.Ino+1
	d := p.Decide(&c2)
	if d.Action != Skip || d.Reason != ReasonQuota {
		t.Fatalf("uid 1000 holding 4 MiB of 16: %v/%s (%s), want skip/quota", d.Action, d.Reason, d.Detail)
	}
	t.Log(d.Detail)
	big := *c
	big.Owner, big.Ino, big.Size = 0, c.Ino+2, 8<<20
	if d := p.Decide(&big); d.Action != Rescue {
		t.Errorf("root's 8 MiB file, half the filesystem: %v %s, want rescue (root is not capped)", d.Action, d.Detail)
	}
}
