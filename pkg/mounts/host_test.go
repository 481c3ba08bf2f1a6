package mounts

import (
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/relinkd/relinkd/pkg/config"
)

// TestWithProcRoot checks that the policy reads the proc root it is given,
// not /proc: here one without PID 1 or self, so relinkd's own view is used
// and the note says where it looked.
func TestWithProcRoot(t *testing.T) {
	root := t.TempDir()
	p := New(&config.RescueConfig{}, zaptest.NewLogger(t), WithProcRoot(root))
	if p.Via() != "" {
		t.Errorf("Via = %q, want \"\" (no PID 1 under %s)", p.Via(), root)
	}
	if want := root + "/self/ns/mnt"; !strings.Contains(p.Describe(), want) {
		t.Errorf("Describe = %q, want it to name %s", p.Describe(), want)
	}
	if _, err := p.Mounts(); err == nil || !strings.Contains(err.Error(), root) {
		t.Errorf("Mounts: %v, want an error about %s", err, root)
	}
}
