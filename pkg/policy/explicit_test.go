package policy

import (
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/mounts"
)

// TestExplicit: an explicit selection is rescued to --to or the located
// root whatever the limits (max_file_size, max_total_size, per_user) say,
// with only min_free, measured on the destination, and nothing reserved;
// a location that cannot be found is a Skip with the reason and the error.
func TestExplicit(t *testing.T) {
	testfs.RequireRoot(t)
	a, other := testfs.Mount(t, "tmpfs", 16), testfs.Mount(t, "tmpfs", 8)
	cfg := testConfig(a + "/rescue")
	cfg.Rescue.MaxFileSize = 10
	cfg.Rescue.MaxTotalSize = 10
	cfg.Rescue.PerUser = config.PerUser{MaxFiles: 1, Window: config.Duration(time.Hour)}
	cfg.Rescue.MinFree = config.Threshold{Percent: 10, IsPercent: true}
	cfg.Rescue.Methods = []string{config.MethodReflink, config.MethodCopy}
	p := New(cfg, zaptest.NewLogger(t))
	_, total, err := mounts.FreeSpace(other)
	if err != nil {
		t.Fatal(err)
	}
	to := other + "/to/be/made"
	c := candidate(t, holdDeleted(t, a+"/d/big.log", 4096), 0)
	for i := range 3 {
		d := p.Explicit(to).DecideRule(c, config.Rule{Name: "named"})
		if d.Action != Rescue || d.Rule != "named" || d.Root != to || d.Via != "" || d.Beneath {
			t.Fatalf("decision %d: %+v, want rescue into %s", i, d, to)
		}
		if !slices.Equal(d.Methods, cfg.Rescue.Methods) {
			t.Errorf("methods %v, want the configured %v", d.Methods, cfg.Rescue.Methods)
		}
		if want := cfg.Rescue.MinFree.Floor(total); d.MinFreeBytes != want {
			t.Errorf("min free %d bytes, want %d (10%% of --to's filesystem)", d.MinFreeBytes, want)
		}
		if want := strings.TrimPrefix(a, "/") + "/d/big.log."; !strings.HasPrefix(d.Rel, want) {
			t.Errorf("rel %q, want %sSUFFIX", d.Rel, want)
		}
	}
	// Nothing was counted: the configured policy still grants the
	// owner's one file (per_user.max_files 1).
	c.Size = 5
	if d := p.DecideRule(c, config.Rule{Name: "all"}); d.Action != Rescue {
		t.Errorf("after explicit decisions: %v/%s %s, want rescue (they reserve nothing)", d.Action, d.Reason, d.Detail)
	}

	// No location: a mount that cannot be found.
	lost := *c
	lost.MntID, lost.Dev = 1<<30, 1<<40
	if d := p.Explicit("").DecideRule(&lost, config.Rule{}); d.Action != Skip || d.Reason != ReasonLocation ||
		!strings.Contains(d.Detail, mounts.ErrNoLocation.Error()) {
		t.Errorf("no location: %+v, want skip/location with the error", d)
	}
}
