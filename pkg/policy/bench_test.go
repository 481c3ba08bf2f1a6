package policy

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/testproc"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// BenchmarkDecide times one decision on the real machine, as a worker
// makes it: the rule already matched, the location found from the host's
// mount table (statx(2) per candidate root), free space (statfs(2)), the
// root's usage counted against max_total_size and the per-user caps, then
// the reservation given back.
func BenchmarkDecide(b *testing.B) {
	dir := b.TempDir()
	path := filepath.Join(dir, "srv", "app.log")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		b.Fatal(err)
	}
	h := testproc.Start(b, testproc.Open(path, "rw"), testproc.Append(0, 4096, 1, 0), testproc.Unlink(path))
	res, err := scanner.New(scanner.Options{}, zap.NewNop()).SweepPIDs(context.Background(), []int{h.PID})
	if err != nil {
		b.Fatal(err)
	}
	var c *scanner.Candidate
	for i := range res.Candidates {
		if res.Candidates[i].FD == h.FDs[0] {
			c = &res.Candidates[i]
		}
	}
	if c == nil {
		b.Fatalf("no candidate for pid %d fd %d", h.PID, h.FDs[0])
	}
	cfg := testConfig(filepath.Join(dir, "rescue"))
	cfg.Rescue.MaxTotalSize = 1 << 40
	cfg.Rescue.PerUser = config.PerUser{MaxFiles: 1 << 30, MaxBytes: 1 << 50, Window: config.Duration(time.Hour)}
	p := New(cfg, zap.NewNop())
	r, ok := p.Match(c)
	if !ok {
		b.Fatal("no rule matches")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		d := p.DecideRule(c, r)
		if d.Action != Rescue {
			b.Fatalf("%v %s: %s", d.Action, d.Reason, d.Detail)
		}
		p.Release(c, d)
	}
}
