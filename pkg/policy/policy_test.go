package policy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/probe"
	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testlayout"
	"github.com/relinkd/relinkd/internal/testproc"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/mounts"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// candidate returns the scanner's real candidate for descriptor FDs[i] of h.
func candidate(t *testing.T, h *testproc.Holder, i int) *scanner.Candidate {
	t.Helper()
	res, err := scanner.New(scanner.Options{}, zaptest.NewLogger(t)).SweepPIDs(context.Background(), []int{h.PID})
	if err != nil {
		t.Fatal(err)
	}
	for k := range res.Candidates {
		if c := &res.Candidates[k]; c.FD == h.FDs[i] {
			return c
		}
	}
	t.Fatalf("scanner found no deleted file at pid %d fd %d (found %d candidates)", h.PID, h.FDs[i], len(res.Candidates))
	return nil
}

// holdDeleted starts a holder that writes size bytes to path, then unlinks it.
func holdDeleted(t *testing.T, path string, size int) *testproc.Holder {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	steps := []testproc.Step{testproc.Open(path, "rw")}
	if size > 0 {
		steps = append(steps, testproc.Append(0, size, 1, 0))
	}
	steps = append(steps, testproc.Unlink(path))
	return testproc.Start(t, steps...)
}

func testConfig(dirs ...string) *config.Config { return testlayout.Config(dirs...) }

func TestMatchRules(t *testing.T) {
	rules := []config.Rule{
		{Name: "big-java", Paths: []string{"/srv/**"}, Commands: []string{"java*"}, MinSize: 1 << 20, Action: config.ActionRescue},
		{Name: "srv-report", Paths: []string{"/srv/**"}, Exclude: []string{"**/*.tmp", "/srv/cache/**"}, Action: config.ActionReport},
		{Name: "logs", Paths: []string{"/var/log/**"}, Users: []string{"root", "1000"}, MaxSize: 100, Action: config.ActionRescue},
		{Name: "one-level", Paths: []string{"/data/*/db"}, Action: config.ActionRescue},
		{Name: "by-exe", Paths: []string{"/opt/**"}, Commands: []string{"postgres"}, Action: config.ActionRescue},
		{Name: "huge", Paths: []string{"/huge/**"}, MinSize: 1<<63 + 1, Action: config.ActionRescue}, // beyond int64: Parse refuses it, code may not
	}
	tests := []struct {
		name string
		c    scanner.Candidate
		rule string // "" = no match
	}{
		{"first rule wins", scanner.Candidate{Path: []byte("/srv/app/heap.bin"), Comm: "java", Size: 2 << 20}, "big-java"},
		{"too small for first rule", scanner.Candidate{Path: []byte("/srv/app/heap.bin"), Comm: "java", Size: 10}, "srv-report"},
		{"command glob on exe basename", scanner.Candidate{Path: []byte("/srv/x"), Comm: "worker-3", Exe: "/usr/lib/jvm/bin/java", Size: 2 << 20}, "big-java"},
		{"deleted exe suffix", scanner.Candidate{Path: []byte("/opt/pg/base"), Comm: "x", Exe: "/usr/bin/postgres (deleted)"}, "by-exe"},
		{"other command", scanner.Candidate{Path: []byte("/opt/pg/base"), Comm: "postgres2", Exe: "/usr/bin/pg"}, ""},
		{"exclude by extension", scanner.Candidate{Path: []byte("/srv/deep/a/b/c.tmp"), Comm: "sh"}, ""},
		{"exclude subtree", scanner.Candidate{Path: []byte("/srv/cache/x"), Comm: "sh"}, ""},
		{"double star deep", scanner.Candidate{Path: []byte("/var/log/a/b/c/d.log"), UID: 0, Size: 5}, "logs"},
		{"user by uid", scanner.Candidate{Path: []byte("/var/log/x"), UID: 1000}, "logs"},
		{"other user", scanner.Candidate{Path: []byte("/var/log/x"), UID: 1001}, ""},
		{"above max size", scanner.Candidate{Path: []byte("/var/log/x"), UID: 0, Size: 101}, ""},
		{"single star one level", scanner.Candidate{Path: []byte("/data/a/db")}, "one-level"},
		{"single star not two levels", scanner.Candidate{Path: []byte("/data/a/b/db")}, ""},
		{"prefix is not a match", scanner.Candidate{Path: []byte("/var/logs/x")}, ""},
		{"newline in name", scanner.Candidate{Path: []byte("/var/log/a\nb")}, "logs"},
		{"min size beyond int64", scanner.Candidate{Path: []byte("/huge/x"), Size: 1 << 40}, ""},
	}
	p := New(&config.Config{Watch: rules}, zaptest.NewLogger(t))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, ok := p.Match(&tt.c)
			if got := map[bool]string{true: r.Name}[ok]; got != tt.rule {
				t.Errorf("rule = %q, want %q", got, tt.rule)
			}
			d := p.Decide(&tt.c)
			if tt.rule == "" && (d.Action != Ignore || d.Reason != ReasonPolicy) {
				t.Errorf("Decide = %v/%s, want ignore/policy", d.Action, d.Reason)
			}
			if tt.rule == "srv-report" && d.Action != Report {
				t.Errorf("Decide = %v, want report", d.Action)
			}
		})
	}
}

// TestMatchRealHolders matches rules on candidates the scanner built from
// real processes: the command is the test binary's, the user is real.
func TestMatchRealHolders(t *testing.T) {
	testfs.RequireRoot(t)
	dir := t.TempDir()
	h := holdDeleted(t, filepath.Join(dir, "root.log"), 10)
	big := holdDeleted(t, filepath.Join(dir, "big.log"), 1000)
	exe, _ := os.Executable()
	cfg := testConfig(filepath.Join(dir, "rescue"))
	cfg.Watch = []config.Rule{
		{Name: "user-1000", Paths: []string{dir + "/**"}, Users: []string{"1000"}, Action: config.ActionReport},
		{Name: "not-us", Paths: []string{dir + "/**"}, Commands: []string{"nginx"}, Action: config.ActionRescue},
		{Name: "us-small", Paths: []string{dir + "/*.log"}, Commands: []string{filepath.Base(exe)}, Users: []string{"root"}, MaxSize: 100, Action: config.ActionRescue},
		{Name: "rest", Paths: []string{"**"}, Action: config.ActionReport},
	}
	p := New(cfg, zaptest.NewLogger(t))
	if d := p.Decide(candidate(t, h, 0)); d.Action != Rescue || d.Rule != "us-small" {
		t.Errorf("small file: %v rule %q (%s), want rescue by us-small", d.Action, d.Rule, d.Detail)
	}
	if d := p.Decide(candidate(t, big, 0)); d.Action != Report || d.Rule != "rest" {
		t.Errorf("big file: %v rule %q, want report by rest", d.Action, d.Rule)
	}
}

func mustMkdir(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// TestLocation chooses rescue locations for files on real loop-mounted
// filesystems, held by real processes.
func TestLocation(t *testing.T) {
	testfs.RequireRoot(t)
	a := testfs.Mount(t, "ext4", 32)
	b := testfs.Mount(t, "tmpfs", 16)
	mustMkdir(t, a+"/rescue", a+"/sub/rescue", a+"/data", b+"/rescue")
	bind := t.TempDir()
	run(t, "mount", "--bind", a+"/sub", bind)
	t.Cleanup(func() { testfs.Unmount(t, bind) })

	onA := holdDeleted(t, a+"/data/f.log", 100)
	onBind := holdDeleted(t, bind+"/g.log", 100)
	tmp := testproc.Start(t, testproc.TmpFile(a+"/data", false), testproc.Write(0, "x"))
	inNS := testproc.StartWith(t, testproc.Options{Unshare: true},
		testproc.Open(a+"/data/ns.log", "rw"), testproc.Write(0, "x"), testproc.Unlink(a+"/data/ns.log"))

	type want struct {
		action    Verdict
		reason    string
		root      string
		kind      string
		sameMount bool
		methods   []string
	}
	tests := []struct {
		name   string
		h      *testproc.Holder
		dirs   []string
		fsDir  string
		cross  bool
		expect want
	}{
		{"configured dir on the same mount", onA, []string{b + "/rescue", a + "/rescue"}, ".relinkd", false,
			want{Rescue, "", a + "/rescue", mounts.KindDir, true, []string{"reflink", "copy"}}},
		{"tmpfile is linkable", tmp, []string{a + "/rescue"}, ".relinkd", false,
			want{Rescue, "", a + "/rescue", mounts.KindDir, true, []string{"link", "reflink", "copy"}}},
		{"bind mount: same fs, other mount", onBind, []string{a + "/rescue"}, ".relinkd", false,
			want{Rescue, "", a + "/rescue", mounts.KindDir, false, []string{"reflink", "copy"}}},
		{"bind mount: dir reachable through the file's mount", onBind, []string{a + "/sub/rescue"}, ".relinkd", false,
			want{Rescue, "", bind + "/rescue", mounts.KindDir, true, []string{"reflink", "copy"}}},
		{"no dir on that fs: per-fs dir", onA, []string{b + "/rescue"}, ".relinkd", false,
			want{Rescue, "", a + "/.relinkd", mounts.KindFSDir, true, []string{"reflink", "copy"}}},
		{"per-fs dir named", onBind, nil, "keep", false,
			want{Rescue, "", bind + "/keep", mounts.KindFSDir, true, []string{"reflink", "copy"}}},
		{"other mount namespace: host's mount of the fs", inNS, []string{b + "/rescue"}, ".relinkd", false,
			want{Rescue, "", a + "/.relinkd", mounts.KindFSDir, false, []string{"reflink", "copy"}}},
		{"no per-fs dir, no cross-fs: skip", onA, []string{b + "/rescue"}, "", false,
			want{Skip, ReasonLocation, "", "", false, nil}},
		{"cross-fs allowed: copy only", onA, []string{b + "/rescue"}, "", true,
			want{Rescue, "", b + "/rescue", mounts.KindCrossFS, false, []string{"copy"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(tt.dirs...)
			cfg.Rescue.FSDir = tt.fsDir
			cfg.Rescue.CrossFS = tt.cross
			p := New(cfg, zaptest.NewLogger(t))
			c := candidate(t, tt.h, 0)
			d := p.Decide(c)
			got := want{d.Action, d.Reason, d.Root, d.Kind, d.SameMount, d.Methods}
			if fmt.Sprint(got) != fmt.Sprint(tt.expect) {
				t.Errorf("-want %+v\n+got  %+v (%s)", tt.expect, got, d.Detail)
			}
			if d.Action == Rescue && !strings.HasSuffix(d.Rel, fmt.Sprintf(".pid%d.fd%d", c.PID, c.FD)) {
				t.Errorf("Rel %q", d.Rel)
			}
		})
	}
}

// TestSpaceGuard fills a small XFS image so that copying a held file would
// go below min_free: the copy is refused, the reflink of the same file
// (no data space) is still allowed, and a real FICLONE there succeeds.
func TestSpaceGuard(t *testing.T) {
	testfs.RequireRoot(t)
	x := testfs.Mount(t, "xfs", 300)
	other := testfs.Mount(t, "tmpfs", 16)
	mustMkdir(t, x+"/rescue", other+"/rescue")
	const size = 4 << 20
	h := holdDeleted(t, x+"/big.log", size)
	c := candidate(t, h, 0)
	avail, _, err := mounts.FreeSpace(x + "/rescue")
	if err != nil {
		t.Fatal(err)
	}

	cfg := testConfig(x + "/rescue")
	// Room for half the file above the floor.
	cfg.Rescue.MinFree = config.Threshold{Bytes: config.Size(avail - size/2)}
	d := New(cfg, zaptest.NewLogger(t)).Decide(c)
	if d.Action != Rescue || !slices.Equal(d.Methods, []string{"reflink"}) {
		t.Fatalf("reflink with copy over min_free: %v %v %s, want rescue [reflink]", d.Action, d.Methods, d.Detail)
	}
	if d.MinFreeBytes != avail-size/2 {
		t.Errorf("MinFreeBytes %d, want %d", d.MinFreeBytes, avail-size/2)
	}
	// The reflink the policy allows really works here and takes no space.
	if err := probe.Reflink(d.Root); err != nil {
		t.Errorf("reflink on xfs: %v", err)
	}

	cfg.Rescue.Methods = []string{"copy"}
	d = New(cfg, zaptest.NewLogger(t)).Decide(c)
	if d.Action != Skip || d.Reason != ReasonSpace {
		t.Errorf("copy only: %v/%s, want skip/space (%s)", d.Action, d.Reason, d.Detail)
	}

	// With room for the whole file the copy is kept.
	cfg.Rescue.MinFree = config.Threshold{Bytes: config.Size(avail - 2*size)}
	d = New(cfg, zaptest.NewLogger(t)).Decide(c)
	if d.Action != Rescue || !slices.Equal(d.Methods, []string{"copy"}) {
		t.Errorf("copy with room: %v %v (%s)", d.Action, d.Methods, d.Detail)
	}

	// A percentage: keeping 99.9% free leaves no room on another fs either.
	cfg = testConfig(other + "/rescue")
	cfg.Rescue.FSDir = ""
	cfg.Rescue.CrossFS = true
	cfg.Rescue.MinFree = config.Threshold{Percent: 99.9, IsPercent: true}
	d = New(cfg, zaptest.NewLogger(t)).Decide(c)
	if d.Action != Skip || d.Reason != ReasonSpace {
		t.Errorf("cross-fs copy over 99.9%%: %v/%s, want skip/space (%s)", d.Action, d.Reason, d.Detail)
	}
}

func TestSizeTotalAndQuota(t *testing.T) {
	testfs.RequireRoot(t)
	a := testfs.Mount(t, "ext4", 32)
	mustMkdir(t, a+"/rescue")
	// An earlier rescue (only names the engine writes count toward the
	// root's usage).
	writeFile(t, a+"/rescue/old.20261121T203000Z.pid1.fd3", strings.Repeat("x", 3000))
	var hs []*testproc.Holder
	for i := range 4 {
		hs = append(hs, holdDeleted(t, fmt.Sprintf("%s/d/f%d", a, i), 1000))
	}
	big := holdDeleted(t, a+"/d/big", 5000)

	cfg := testConfig(a + "/rescue")
	cfg.Rescue.MaxFileSize = 4000
	p := New(cfg, zaptest.NewLogger(t))
	if d := p.Decide(candidate(t, big, 0)); d.Action != Skip || d.Reason != ReasonSize {
		t.Errorf("over max_file_size: %v/%s", d.Action, d.Reason)
	}

	// max_total_size counts what is already in the root (3000) and what
	// was granted since.
	cfg.Rescue.MaxTotalSize = 5500
	p = New(cfg, zaptest.NewLogger(t))
	c0, c1, c2 := candidate(t, hs[0], 0), candidate(t, hs[1], 0), candidate(t, hs[2], 0)
	for i, c := range []*scanner.Candidate{c0, c1} {
		if d := p.Decide(c); d.Action != Rescue {
			t.Fatalf("file %d under max_total_size: %v %s", i, d.Action, d.Detail)
		}
	}
	d := p.Decide(c2)
	if d.Action != Skip || d.Reason != ReasonSpace {
		t.Errorf("over max_total_size: %v/%s %s", d.Action, d.Reason, d.Detail)
	}
	// A failed rescue gives its share back.
	p.Release(c1, Decision{Action: Rescue, Root: a + "/rescue"})
	if d := p.Decide(c2); d.Action != Rescue {
		t.Errorf("after Release: %v %s", d.Action, d.Detail)
	}

	// Per-user cap: files of one owner within the window.
	cfg = testConfig(a + "/rescue")
	cfg.Rescue.PerUser = config.PerUser{MaxFiles: 2, Window: config.Duration(time.Hour)}
	p = New(cfg, zaptest.NewLogger(t))
	now := time.Now()
	p.now = func() time.Time { return now }
	for i := range 2 {
		if d := p.Decide(candidate(t, hs[i], 0)); d.Action != Rescue {
			t.Fatalf("file %d under per_user.max_files: %v %s", i, d.Action, d.Detail)
		}
	}
	if d := p.Decide(candidate(t, hs[2], 0)); d.Action != Skip || d.Reason != ReasonQuota {
		t.Errorf("third file: %v/%s, want skip/quota", d.Action, d.Reason)
	}
	// A reloaded policy keeps the grants of the old one.
	reloaded := New(cfg, zaptest.NewLogger(t))
	reloaded.now = p.now
	reloaded.Inherit(p)
	if d := reloaded.Decide(candidate(t, hs[2], 0)); d.Action != Skip || d.Reason != ReasonQuota {
		t.Errorf("after reload: %v/%s, want skip/quota", d.Action, d.Reason)
	}

	// Another owner is not affected.
	c3 := candidate(t, hs[3], 0)
	c3.Owner = 4242
	if d := p.Decide(c3); d.Action != Rescue {
		t.Errorf("other owner: %v %s", d.Action, d.Detail)
	}
	// Once the window has passed the owner may rescue again.
	now = now.Add(time.Hour + time.Second)
	if d := p.Decide(candidate(t, hs[2], 0)); d.Action != Rescue {
		t.Errorf("after the window: %v %s", d.Action, d.Detail)
	}

	cfg.Rescue.PerUser = config.PerUser{MaxBytes: 1500, Window: config.Duration(time.Hour)}
	p = New(cfg, zaptest.NewLogger(t))
	if d := p.Decide(candidate(t, hs[0], 0)); d.Action != Rescue {
		t.Fatalf("first 1000 bytes: %v", d.Action)
	}
	if d := p.Decide(candidate(t, hs[1], 0)); d.Action != Skip || d.Reason != ReasonQuota {
		t.Errorf("over per_user.max_bytes: %v/%s", d.Action, d.Reason)
	}
}

func TestRescuedFilesNeverMatch(t *testing.T) {
	cfg := testConfig("/var/lib/relinkd/rescued")
	p := New(cfg, zaptest.NewLogger(t))
	for _, path := range []string{"/var/lib/relinkd/rescued/var/log/x", "/home/.relinkd/a/b"} {
		if d := p.Decide(&scanner.Candidate{Path: []byte(path)}); d.Action != Ignore {
			t.Errorf("%s: %v, want ignore", path, d.Action)
		}
	}
}

// TestLocationBtrfsSubvolume holds a file through a mount of a btrfs
// subvolume: its st_dev is the subvolume's, not the device mountinfo shows,
// so the rescue directory on the top-level mount is found by mount and
// superblock, never by comparing st_dev or path prefixes.
func TestLocationBtrfsSubvolume(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "btrfs", "findmnt")
	top := testfs.Mount(t, "btrfs", 120)
	run(t, "btrfs", "-q", "subvolume", "create", top+"/sv")
	mustMkdir(t, top+"/rescue")
	out, err := exec.Command("findmnt", "-no", "SOURCE", top).Output()
	if err != nil {
		t.Fatalf("findmnt %s: %v", top, err)
	}
	src := strings.TrimSpace(string(out))
	sub := t.TempDir()
	run(t, "mount", "-o", "subvol=sv", src, sub)
	t.Cleanup(func() { testfs.Unmount(t, sub) })

	h := holdDeleted(t, sub+"/app.log", 100)
	c := candidate(t, h, 0)
	var st unix.Stat_t
	if err := unix.Stat(top, &st); err != nil {
		t.Fatal(err)
	}
	if c.Dev == st.Dev {
		t.Logf("subvolume st_dev equals the top-level one (%d)", c.Dev)
	}
	p := New(testConfig(top+"/rescue"), zaptest.NewLogger(t))
	d := p.Decide(c)
	if d.Action != Rescue || d.Root != top+"/rescue" || d.Kind != mounts.KindDir || d.SameMount || !d.SameFS ||
		!slices.Equal(d.Methods, []string{"reflink", "copy"}) {
		t.Errorf("got %v root %q kind %s same mount %v same fs %v methods %v (%s)", d.Action, d.Root, d.Kind, d.SameMount, d.SameFS, d.Methods, d.Detail)
	}
	// The reflink the policy allows works across the subvolume mounts.
	if err := probe.Reflink(d.Root); err != nil {
		t.Errorf("reflink on btrfs: %v", err)
	}
}

// TestPlantedRescueRoot: on a world-writable filesystem anyone can create
// the per-filesystem directory first; a symlink or a directory that is not
// root's own is refused, never used.
func TestPlantedRescueRoot(t *testing.T) {
	testfs.RequireRoot(t)
	tests := []struct {
		name  string
		plant func(t *testing.T, root string)
	}{
		{"symlink", func(t *testing.T, root string) {
			if err := os.Symlink(t.TempDir(), root); err != nil {
				t.Fatal(err)
			}
		}},
		{"owned by a user", func(t *testing.T, root string) {
			mustMkdir(t, root)
			if err := os.Chown(root, 1000, 1000); err != nil {
				t.Fatal(err)
			}
		}},
		{"world-writable", func(t *testing.T, root string) {
			mustMkdir(t, root)
			if err := os.Chmod(root, 0o1777); err != nil {
				t.Fatal(err)
			}
		}},
		{"a file", func(t *testing.T, root string) { writeFile(t, root, "x") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := testfs.Mount(t, "tmpfs", 8)
			tt.plant(t, m+"/.relinkd")
			h := holdDeleted(t, m+"/f", 10)
			cfg := testConfig()
			p := New(cfg, zaptest.NewLogger(t))
			c := candidate(t, h, 0)
			if d := p.Decide(c); d.Action != Skip || d.Reason != ReasonLocation {
				t.Errorf("planted %s: %v/%s root %q, want skip/location", tt.name, d.Action, d.Reason, d.Root)
			}
			// The same as a configured directory is refused too.
			cfg = testConfig(m + "/.relinkd")
			cfg.Rescue.FSDir = ""
			if d := New(cfg, zaptest.NewLogger(t)).Decide(c); d.Action != Skip {
				t.Errorf("configured planted %s: %v root %q, want skip", tt.name, d.Action, d.Root)
			}
		})
	}
}
