package policy

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/mounts"
	"github.com/relinkd/relinkd/pkg/retention"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// places is a made-up machine for the policy's own interfaces (Locator,
// Space, Store): one location for every file, a fixed free space, and
// what the rescue roots hold as given. It records what was asked of it.
type places struct {
	loc          mounts.Location
	locErr       error
	avail, total uint64
	spaceErr     error
	used         uint64            // bytes in every root
	owners       map[uint32]uint64 // of which, by owner
	usageCalls   int
}

func (f *places) Locate(*scanner.Candidate) (mounts.Location, error) { return f.loc, f.locErr }
func (f *places) KnownRoots() ([]string, error)                      { return nil, nil }
func (f *places) Room(mounts.Location) (uint64, uint64, error)       { return f.avail, f.total, f.spaceErr }
func (f *places) FreeSpace(string) (uint64, uint64, error)           { return f.avail, f.total, f.spaceErr }

func (f *places) Usage(string) (uint64, map[uint32]uint64, error) {
	f.usageCalls++
	return f.used, maps.Clone(f.owners), nil
}

func (f *places) Prune(string, time.Duration, uint64, uint64, time.Time) (retention.Result, error) {
	return retention.Result{Kept: f.used}, nil
}

// on returns a policy for cfg that locates and measures through f only.
func on(t *testing.T, cfg *config.Config, f *places) *Policy {
	t.Helper()
	p := New(cfg, zaptest.NewLogger(t))
	p.loc, p.space, p.store = f, f, f
	return p
}

// TestDecideTable runs Decide's logic on made-up locations and free
// space: which methods are left for the location, the size, space, total
// and per-user limits, and why a file is skipped. It needs no root and no
// filesystem: the machine is the policy's own interfaces (places).
func TestDecideTable(t *testing.T) {
	const mib = 1 << 20
	sameMount := mounts.Location{Root: "/srv/.relinkd", Kind: mounts.KindFSDir, SameMount: true, SameFS: true, FSType: "xfs"}
	sameFS := mounts.Location{Root: "/srv/rescue", Kind: mounts.KindDir, SameFS: true, FSType: "btrfs"}
	crossFS := mounts.Location{Root: "/var/rescue", Kind: mounts.KindCrossFS, FSType: "ext4"}
	inside := mounts.Location{Root: "/.relinkd", Via: "/proc/42/root", Beneath: true, Kind: mounts.KindFSDir, SameMount: true, SameFS: true}
	roomy := places{avail: 900 * mib, total: 1000 * mib}
	with := func(f places, loc mounts.Location) places { f.loc = loc; return f }

	type want struct {
		action  Verdict
		reason  string
		methods []string // what is left for the location, a skip's too
		detail  string   // a part of Detail or NoRoomToCopy
	}
	tests := []struct {
		name   string
		cfg    func(*config.Config)
		places places
		c      scanner.Candidate
		want   want
	}{
		{
			name:   "no rule matches",
			cfg:    func(c *config.Config) { c.Watch[0].Paths = []string{"/var/log/**"} },
			places: with(roomy, sameMount),
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 10},
			want:   want{action: Ignore, reason: ReasonPolicy},
		},
		{
			name:   "report rule",
			cfg:    func(c *config.Config) { c.Watch[0].Action = config.ActionReport },
			places: with(roomy, sameMount),
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 10},
			want:   want{action: Report},
		},
		{
			name:   "file in a rescue directory",
			places: with(roomy, sameMount),
			c:      scanner.Candidate{Path: []byte("/srv/.relinkd/var/log/a.log"), Size: 10},
			want:   want{action: Ignore, reason: ReasonPolicy},
		},
		{
			name:   "above max_file_size",
			cfg:    func(c *config.Config) { c.Rescue.MaxFileSize = 100 },
			places: with(roomy, sameMount),
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 101},
			want:   want{action: Skip, reason: ReasonSize, detail: "above rescue.max_file_size"},
		},
		{
			name:   "no location",
			places: places{locErr: fmt.Errorf("pid 1 fd 3: nowhere: %w", mounts.ErrNoLocation)},
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 10},
			want:   want{action: Skip, reason: ReasonLocation, detail: "nowhere"},
		},
		{
			name:   "same mount, linkable: every method",
			places: with(roomy, sameMount),
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 10, Linkable: true},
			want:   want{action: Rescue, methods: []string{config.MethodLink, config.MethodReflink, config.MethodCopy}},
		},
		{
			name:   "same mount, not linkable",
			places: with(roomy, sameMount),
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 10},
			want:   want{action: Rescue, methods: []string{config.MethodReflink, config.MethodCopy}},
		},
		{
			name:   "same filesystem, another mount",
			places: with(roomy, sameFS),
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 10, Linkable: true},
			want:   want{action: Rescue, methods: []string{config.MethodReflink, config.MethodCopy}},
		},
		{
			name:   "another filesystem: copy only",
			places: with(roomy, crossFS),
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 10, Linkable: true},
			want:   want{action: Rescue, methods: []string{config.MethodCopy}},
		},
		{
			name:   "configured order is kept",
			cfg:    func(c *config.Config) { c.Rescue.Methods = []string{config.MethodCopy, config.MethodLink} },
			places: with(roomy, sameMount),
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 10, Linkable: true},
			want:   want{action: Rescue, methods: []string{config.MethodCopy, config.MethodLink}},
		},
		{
			name:   "link only, not linkable",
			cfg:    func(c *config.Config) { c.Rescue.Methods = []string{config.MethodLink} },
			places: with(roomy, sameMount),
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 10},
			want:   want{action: Skip, reason: ReasonMethod, detail: "cannot work from xfs"},
		},
		{
			name:   "no room to copy, reflink left",
			cfg:    func(c *config.Config) { c.Rescue.MinFree = config.Threshold{Percent: 10, IsPercent: true} },
			places: with(places{avail: 150 * mib, total: 1000 * mib}, sameFS),
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 60 * mib},
			want:   want{action: Rescue, methods: []string{config.MethodReflink}, detail: "below min_free 10%"},
		},
		{
			name:   "no room to copy, nothing left",
			cfg:    func(c *config.Config) { c.Rescue.MinFree = config.Threshold{Percent: 10, IsPercent: true} },
			places: with(places{avail: 150 * mib, total: 1000 * mib}, crossFS),
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 60 * mib},
			want:   want{action: Skip, reason: ReasonSpace, detail: "below min_free 10%"},
		},
		{
			name:   "free space unknown",
			places: with(places{spaceErr: errors.New("statfs /var/rescue: input/output error")}, crossFS),
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 10},
			want:   want{action: Skip, methods: []string{config.MethodCopy}, reason: ReasonSpace, detail: "input/output error"},
		},
		{
			name:   "root over max_total_size",
			cfg:    func(c *config.Config) { c.Rescue.MaxTotalSize = 100 },
			places: func() places { f := with(roomy, crossFS); f.used = 95; return f }(),
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 10},
			want:   want{action: Skip, methods: []string{config.MethodCopy}, reason: ReasonSpace, detail: "would pass rescue.max_total_size"},
		},
		{
			name:   "a container's own root is not capped",
			cfg:    func(c *config.Config) { c.Rescue.MaxTotalSize = 100 },
			places: func() places { f := with(roomy, inside); f.used = 95; return f }(),
			c:      scanner.Candidate{Path: []byte("/srv/x"), Size: 10},
			want:   want{action: Rescue, methods: []string{config.MethodReflink, config.MethodCopy}},
		},
		{
			name: "owner over max_share",
			cfg: func(c *config.Config) {
				c.Rescue.PerUser.MaxShare = config.Threshold{Percent: 1, IsPercent: true}
			},
			places: func() places {
				f := with(roomy, crossFS)
				f.used, f.owners = 9*mib, map[uint32]uint64{1000: 9 * mib}
				return f
			}(),
			c:    scanner.Candidate{Path: []byte("/srv/x"), Size: 2 * mib, Owner: 1000},
			want: want{action: Skip, methods: []string{config.MethodCopy}, reason: ReasonQuota, detail: "per_user.max_share 1%"},
		},
		{
			name: "root's files are not capped by max_share",
			cfg: func(c *config.Config) {
				c.Rescue.PerUser.MaxShare = config.Threshold{Percent: 1, IsPercent: true}
			},
			places: func() places {
				f := with(roomy, crossFS)
				f.used, f.owners = 9*mib, map[uint32]uint64{0: 9 * mib}
				return f
			}(),
			c:    scanner.Candidate{Path: []byte("/srv/x"), Size: 2 * mib, Owner: 0},
			want: want{action: Rescue, methods: []string{config.MethodCopy}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig("/srv/rescue")
			cfg.Rescue.FSDir = ".relinkd"
			if tt.cfg != nil {
				tt.cfg(cfg)
			}
			f := tt.places
			p := on(t, cfg, &f)
			c := tt.c
			c.PID, c.FD = 7, 3
			d := p.Decide(&c)
			if d.Action != tt.want.action || d.Reason != tt.want.reason || !slices.Equal(d.Methods, tt.want.methods) {
				t.Errorf("-want %v %q %v\n+got  %v %q %v (%s)", tt.want.action, tt.want.reason, tt.want.methods, d.Action, d.Reason, d.Methods, d.Detail)
			}
			if why := d.Detail + d.NoRoomToCopy; !strings.Contains(why, tt.want.detail) {
				t.Errorf("detail %q, want it to say %q", why, tt.want.detail)
			}
			if d.Action != Rescue {
				return
			}
			if d.Root != f.loc.Root || d.Via != f.loc.Via || d.Beneath != f.loc.Beneath || d.Kind != f.loc.Kind ||
				d.SameMount != f.loc.SameMount || d.SameFS != f.loc.SameFS {
				t.Errorf("decision %+v does not carry the location %+v", d, f.loc)
			}
			if want := cfg.Rescue.MinFree.Floor(f.total); d.MinFreeBytes != want {
				t.Errorf("MinFreeBytes %d, want %d", d.MinFreeBytes, want)
			}
			if !strings.HasSuffix(d.Rel, ".pid7.fd3") {
				t.Errorf("Rel %q", d.Rel)
			}
		})
	}
}

// TestDecideQuota: per_user.max_files and max_bytes count what Decide
// granted within the window, Release gives a grant back, and the window
// forgets old grants; the total counts what was granted since the root
// was measured, which happens once per usageTTL.
func TestDecideQuota(t *testing.T) {
	cfg := testConfig("/srv/rescue")
	cfg.Rescue.PerUser = config.PerUser{MaxFiles: 2, MaxBytes: 250, Window: config.Duration(time.Hour)}
	cfg.Rescue.MaxTotalSize = 1000
	f := places{avail: 1 << 30, total: 1 << 30, loc: mounts.Location{Root: "/var/rescue", Kind: mounts.KindCrossFS}, used: 600}
	p := on(t, cfg, &f)
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	p.now = func() time.Time { return now }
	file := func(ino uint64, owner uint32, size int64) *scanner.Candidate {
		return &scanner.Candidate{Path: []byte("/srv/x"), PID: 7, FD: 3, Dev: 1, Ino: ino, Owner: owner, Size: size}
	}
	step := func(c *scanner.Candidate, action Verdict, reason string) Decision {
		t.Helper()
		d := p.Decide(c)
		if d.Action != action || d.Reason != reason {
			t.Fatalf("ino %d uid %d size %d: %v %q (%s), want %v %q", c.Ino, c.Owner, c.Size, d.Action, d.Reason, d.Detail, action, reason)
		}
		return d
	}
	step(file(1, 1000, 100), Rescue, "")
	d2 := step(file(2, 1000, 100), Rescue, "")
	step(file(3, 1000, 10), Skip, ReasonQuota) // a third file
	p.Release(file(2, 1000, 100), d2)
	step(file(4, 1000, 200), Skip, ReasonQuota) // 100 + 200 bytes > 250
	step(file(4, 1000, 150), Rescue, "")
	// The root: 600 measured + 250 granted; 200 more would pass 1000.
	step(file(5, 2000, 200), Skip, ReasonSpace)
	step(file(5, 2000, 150), Rescue, "")
	if f.usageCalls != 1 {
		t.Errorf("root measured %d times within usageTTL, want 1", f.usageCalls)
	}
	// An hour later the grants are out of the window, and the root is
	// measured again: what is on disk now is all it holds.
	now = now.Add(time.Hour + time.Second)
	f.used = 0
	step(file(6, 1000, 250), Rescue, "")
	if f.usageCalls != 2 {
		t.Errorf("root measured %d times after usageTTL, want 2", f.usageCalls)
	}
}
