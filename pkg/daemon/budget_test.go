package daemon

import (
	"slices"
	"testing"

	"github.com/relinkd/relinkd/pkg/metrics"
)

// TestBudget: pins and bytes are bounded, a file beyond them is deferred
// and its holder handed back once a pin is released, each budget is said
// once per burst, and follows are bounded the same way.
func TestBudget(t *testing.T) {
	type op struct {
		do   string // check, take, give, deferred, follow, unfollow
		pid  int
		size int64
		// what check or follow says
		ok   bool
		warn bool
		kind string // check refused: "pins" or "pinned_bytes"
		// what deferred says
		pids     []int
		released bool
		room     bool // a token in room after the op
	}
	tests := []struct {
		name string
		ops  []op
	}{
		{"within both budgets", []op{
			{do: "check", pid: 1, size: 10, ok: true},
			{do: "take", size: 10},
			{do: "check", pid: 2, size: 90, ok: true},
		}},
		{"pins full: deferred, said once, room on release", []op{
			{do: "take", size: 1}, {do: "take", size: 1},
			{do: "check", pid: 7, size: 1, kind: "pins", warn: true},
			{do: "check", pid: 8, size: 1, kind: "pins"},
			{do: "give", size: 1, room: true},
			{do: "deferred", pids: []int{7, 8}},
			{do: "check", pid: 7, size: 1, ok: true},
			{do: "deferred", released: true},
			{do: "take", size: 1},
			{do: "check", pid: 9, size: 1, kind: "pins", warn: true},
		}},
		{"bytes full", []op{
			{do: "take", size: 60},
			{do: "check", pid: 3, size: 41, kind: "pinned_bytes", warn: true},
			{do: "check", pid: 3, size: 40, ok: true},
		}},
		{"release with nothing deferred: no room", []op{
			{do: "take", size: 1},
			{do: "give", size: 1},
			{do: "deferred"},
		}},
		{"follows bounded, said once per burst", []op{
			{do: "follow", ok: true}, {do: "follow", ok: true},
			{do: "follow", warn: true}, {do: "follow"},
			{do: "unfollow"},
			{do: "follow", ok: true},
			{do: "unfollow"}, {do: "unfollow"},
			{do: "follow", ok: true}, {do: "follow", ok: true},
			{do: "follow", warn: true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBudget(2, 100, 2, metrics.New())
			for i, o := range tt.ops {
				switch o.do {
				case "check":
					f, ok := b.check(o.pid, o.size)
					if ok != o.ok || f.warn != o.warn || f.budget != o.kind {
						t.Fatalf("op %d check(%d, %d) = %+v %v, want ok %v warn %v budget %q", i, o.pid, o.size, f, ok, o.ok, o.warn, o.kind)
					}
				case "take":
					b.take(o.size)
				case "give":
					b.give(o.size)
				case "deferred":
					pids, released, _ := b.takeDeferred()
					if !slices.Equal(sorted(pids), o.pids) && len(pids)+len(o.pids) > 0 || released != o.released {
						t.Fatalf("op %d takeDeferred = %v %v, want %v %v", i, pids, released, o.pids, o.released)
					}
				case "follow":
					if ok, warn := b.startFollow(); ok != o.ok || warn != o.warn {
						t.Fatalf("op %d startFollow = %v %v, want %v %v", i, ok, warn, o.ok, o.warn)
					}
				case "unfollow":
					b.endFollow()
				}
				room := false
				select {
				case <-b.room:
					room = true
				default:
				}
				if room != o.room {
					t.Fatalf("op %d (%s): room %v, want %v", i, o.do, room, o.room)
				}
			}
			if got := value(b.m.PinsHeld); got != float64(b.pins) {
				t.Errorf("pins_held = %v, want %d", got, b.pins)
			}
		})
	}
}
