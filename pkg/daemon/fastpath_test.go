package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
	"github.com/relinkd/relinkd/pkg/config"
)

// BenchmarkFastPath measures the daemon's side of the fast path, on a real
// holder of 16 deleted files in a watched tree: a targeted sweep of the
// holder and its candidates considered (sweep), each candidate considered
// when its inode is known already (known: what every later sweep costs),
// and a first sight, pinned and queued (pin; the job is abandoned again to
// start over).
func BenchmarkFastPath(b *testing.B) {
	testfs.RequireRoot(b)
	mnt := testfs.Mount(b, "tmpfs", 16)
	watched := filepath.Join(mnt, "w")
	if err := os.Mkdir(watched, 0o755); err != nil {
		b.Fatal(err)
	}
	d, err := New(Options{Config: benchConfig(b, watched, filepath.Join(mnt, "rescued"))}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	var steps []testproc.Step
	for i := range 16 {
		p := filepath.Join(watched, fmt.Sprintf("%d.log", i))
		if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
			b.Fatal(err)
		}
		steps = append(steps, testproc.Open(p, "r"), testproc.Unlink(p))
	}
	holder := testproc.Start(b, steps...)
	ctx := context.Background()
	res, err := d.sweeper.SweepPIDs(ctx, []int{holder.PID})
	if err != nil || len(res.Candidates) != 16 {
		b.Fatalf("sweep: %d candidates, %v", len(res.Candidates), err)
	}
	c := res.Candidates[0]

	b.Run("pin", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			d.consider(&c, time.Now())
			select {
			case j := <-d.workers.jobs:
				d.abandon(j)
			default:
				b.Fatal("nothing queued")
			}
		}
	})
	// Known from here on: every file pinned and queued once.
	now := time.Now()
	for i := range res.Candidates {
		d.consider(&res.Candidates[i], now)
	}
	b.Run("known", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			d.consider(&c, now)
		}
	})
	b.Run("sweep", func(b *testing.B) {
		b.ReportAllocs()
		pids := []int{holder.PID}
		for range b.N {
			d.sweepPIDs(ctx, "event", pids, nil)
		}
	})
	if len(d.workers.jobs) != 16 {
		b.Fatalf("%d jobs queued, want 16", len(d.workers.jobs))
	}
	for len(d.workers.jobs) > 0 {
		d.abandon(<-d.workers.jobs)
	}
}

func benchConfig(b *testing.B, watched, rescued string) *config.Config {
	b.Helper()
	y := fmt.Sprintf("scan:\n  interval: 1h\n  events: true\nwatch:\n  - name: w\n    paths: [%q]\n    action: rescue\nrescue:\n  dirs: [%q]\n  min_free: 1%%\n", watched+"/**", rescued)
	cfg, err := config.Parse("bench.yaml", []byte(y))
	if err != nil {
		b.Fatal(err)
	}
	return cfg
}
