package policy

import (
	"slices"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/relinkd/relinkd/internal/testlayout"
)

// The prune itself is tested in retention; this checks what the policy
// adds around it (testlayout.RescueTree: three rescued files, oldest first).

func TestPolicyPruneRefreshesUsage(t *testing.T) {
	root := t.TempDir()
	testlayout.RescueTree(t, root)
	cfg := testConfig(root)
	cfg.Rescue.MaxTotalSize = 3100
	cfg.Rescue.Retention = 0
	cfg.Rescue.FSDir = "" // else Roots lists the fs_dir roots of the host's mounts too (TestKnownRoots)
	p := New(cfg, zaptest.NewLogger(t))
	res, err := p.Prune(root)
	if err != nil {
		t.Fatal(err)
	}
	if res.Removed != 2 || res.Kept > 3100 {
		t.Errorf("%+v", res)
	}
	// Every configured root, the container root too, and nothing else.
	if got := p.Roots(); !slices.Equal(got, []string{root, cfg.Rescue.ContainerDir}) {
		t.Errorf("Roots %v", got)
	}
}
