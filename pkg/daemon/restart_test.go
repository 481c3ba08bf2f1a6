package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/layout"
	"github.com/relinkd/relinkd/internal/testproc"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/relink"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// restart stops h's daemon and starts another on the same filesystem and
// configuration, as a restarted relinkd: nothing is carried over but what
// is on disk.
func (h *harness) restart() *harness {
	t := h.t
	t.Helper()
	h.stop()
	n := &harness{t: t, mnt: h.mnt, watched: h.watched, rescued: h.rescued,
		done: make(chan error, 1), notes: make(chan string, 64)}
	n.run(Options{Config: h.d.opt.Config, Notify: func(s string) { n.notes <- s }}, hooks{})
	return n
}

// rescuedFiles lists the rescued files (sidecars left out) under root.
func rescuedFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() && !strings.HasSuffix(p, layout.SidecarSuffix) {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func fastSweeps(o *Options) { o.Config.Scan.Interval = config.Duration(100 * time.Millisecond) }

// TestRestartAlreadyRescued: a file rescued before a restart and still
// held is not copied again by the daemons that follow: each says "already
// rescued" once, the rescue root keeps one copy.
func TestRestartAlreadyRescued(t *testing.T) {
	h := start(t, "ext4", func(w, r string) *config.Config { return testConfig(t, w, r, "", "") }, fastSweeps)
	p := filepath.Join(h.watched, "held.log")
	write(t, p, "held data\n")
	testproc.Start(t, testproc.Open(p, "r"), testproc.Unlink(p))
	ev := h.wait("file rescued", 1, msgPath("file rescued", p))
	to := field(ev[0], "rescued_to")
	for i := range 3 {
		h = h.restart()
		got := h.wait("already rescued", 1, msgPath("already rescued", p))
		h.fullSweeps(3)
		if n := h.logs.FilterMessage("already rescued").Len(); n != 1 {
			t.Errorf("restart %d: %d already rescued events, want 1", i+1, n)
		}
		if n := h.logs.FilterMessage("file rescued").Len(); n != 0 {
			t.Errorf("restart %d: rescued again: %v", i+1, h.logs.FilterMessage("file rescued").All())
		}
		if f := field(got[0], "rescued_to"); f != to {
			t.Errorf("restart %d: already rescued to %v, want %v", i+1, f, to)
		}
		if files := rescuedFiles(t, h.rescued); len(files) != 1 {
			t.Errorf("restart %d: rescue root holds %v, want one file", i+1, files)
		}
		if got := value(h.d.m.PinsHeld); got != 0 {
			t.Errorf("restart %d: pins_held = %v, want 0", i+1, got)
		}
	}
}

// TestRestartInodeReuse: the sidecar of a file rescued before the restart
// names an inode number that, once that file was freed, went to a new
// deleted file: another birth time, so the new file is rescued.
func TestRestartInodeReuse(t *testing.T) {
	h := start(t, "ext4", func(w, r string) *config.Config { return testConfig(t, w, r, "", "") }, nil)
	first := filepath.Join(h.watched, "first.log")
	write(t, first, "first\n")
	var st syscall.Stat_t
	if err := syscall.Stat(first, &st); err != nil {
		t.Fatal(err)
	}
	ino := st.Ino
	hold := testproc.Start(t, testproc.Open(first, "r"), testproc.Unlink(first))
	h.wait("first rescue", 1, msgPath("file rescued", first))
	h.stop()
	hold.Exit(t)
	// The daemon's pin is gone with it: the inode is free. ext4 hands the
	// lowest free inode of the group to the next file (see TestInodeReuse).
	var second string
	for i := 0; i < 200 && second == ""; i++ {
		p := filepath.Join(h.watched, fmt.Sprintf("second%d.log", i))
		write(t, p, "second\n")
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Ino == ino {
			second = p
		}
	}
	if second == "" {
		t.Fatalf("ext4 did not hand out the freed inode %d again: the test cannot check reuse", ino)
	}
	testproc.Start(t, testproc.Open(second, "r"), testproc.Unlink(second))
	h = h.restart()
	h.wait("rescue of the reused inode", 1, msgPath("file rescued", second))
	if evs := h.logs.FilterMessage("already rescued").All(); len(evs) != 0 {
		t.Errorf("a new file with a reused inode number taken for the old one: %v", evs)
	}
}

// TestRestartSidecarNotTrusted: a sidecar that does not match the file
// beside it, or that has no birth time (a filesystem without one), is not
// taken as a rescue: the file is rescued again, which loses nothing.
func TestRestartSidecarNotTrusted(t *testing.T) {
	for _, tt := range []struct {
		name string
		edit func(t *testing.T, s *relink.Sidecar, rescued string)
	}{
		{"another rescued inode", func(t *testing.T, s *relink.Sidecar, _ string) { s.RescuedIno++ }},
		{"no birth time", func(t *testing.T, s *relink.Sidecar, _ string) { s.BirthTime = 0 }},
		{"rescued file replaced", func(t *testing.T, s *relink.Sidecar, rescued string) {
			b, err := os.ReadFile(rescued)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(rescued); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(rescued, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			h := start(t, "ext4", func(w, r string) *config.Config { return testConfig(t, w, r, "", "") }, nil)
			p := filepath.Join(h.watched, "held.log")
			write(t, p, "held data\n")
			testproc.Start(t, testproc.Open(p, "r"), testproc.Unlink(p))
			ev := h.wait("file rescued", 1, msgPath("file rescued", p))
			rescued := field(ev[0], "rescued_to").(string)
			h.stop()
			b, err := os.ReadFile(rescued + layout.SidecarSuffix)
			if err != nil {
				t.Fatal(err)
			}
			s, err := relink.ParseSidecar(b)
			if err != nil {
				t.Fatal(err)
			}
			tt.edit(t, &s, rescued)
			if b, err = json.Marshal(s); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(rescued+layout.SidecarSuffix, b, 0o600); err != nil {
				t.Fatal(err)
			}
			h = h.restart()
			h.wait("second rescue", 1, msgPath("file rescued", p))
			if evs := h.logs.FilterMessage("already rescued").All(); len(evs) != 0 {
				t.Errorf("an untrustworthy sidecar was believed: %v", evs)
			}
			if evs := h.logs.FilterMessage("sidecar ignored").All(); len(evs) != 1 {
				t.Errorf("want one sidecar ignored event, got %v", evs)
			}
			if files := rescuedFiles(t, h.rescued); len(files) != 2 {
				t.Errorf("rescue root holds %v, want the old file and the new rescue", files)
			}
		})
	}
}

// TestRestartResumesFollow: a daemon stopped while it follows a growing
// file leaves the follow to the next one, which appends to the same
// rescued file until the writer closes it.
func TestRestartResumesFollow(t *testing.T) {
	h := start(t, "ext4", func(w, r string) *config.Config { return testConfig(t, w, r, "", "") }, nil)
	p := filepath.Join(h.watched, "grow.log")
	write(t, p, "head\n")
	w := testproc.Start(t, testproc.Open(p, "a"), testproc.Unlink(p))
	ev := h.wait("file rescued", 1, msgPath("file rescued", p))
	rescued := field(ev[0], "rescued_to").(string)
	w.Do(t, testproc.Append(0, 1000, 3, 0))
	watchDir(t, h.wake, filepath.Dir(rescued))
	h.waitFor("the sidecar to say following", func() bool {
		b, err := os.ReadFile(rescued + layout.SidecarSuffix)
		if err != nil {
			return false
		}
		s, err := relink.ParseSidecar(b)
		return err == nil && s.Following
	})
	h.stop()
	if n := h.logs.FilterMessage("follow stopped").Len(); n != 1 {
		t.Errorf("%d follow stopped events at shutdown, want 1", n)
	}
	w.Do(t, testproc.Append(0, 1000, 2, 0))

	h = h.restart()
	got := h.wait("already rescued", 1, msgPath("already rescued", p))
	if field(got[0], "follow") != true || field(got[0], "rescued_to") != rescued {
		t.Errorf("already rescued: want follow true into %s, got %v", rescued, got[0].ContextMap())
	}
	go func() {
		w.Do(t, testproc.Append(0, 1000, 4, 20*time.Millisecond))
		w.Exit(t)
	}()
	fin := h.wait("follow finished", 1, msgPath("follow finished", p))
	want := 5 + 9*1000
	if b := field(fin[0], "bytes"); b != int64(want) || field(fin[0], "rescued_to") != rescued {
		t.Errorf("follow finished: want %d bytes into %s, got %v", want, rescued, fin[0].ContextMap())
	}
	if fi, err := os.Stat(rescued); err != nil || fi.Size() != int64(want) {
		t.Errorf("rescued file: want %d bytes, got %v %v", want, fi, err)
	}
	if files := rescuedFiles(t, h.rescued); !slices.Equal(files, []string{rescued}) {
		t.Errorf("rescue root holds %v, want only %s", files, rescued)
	}
	if n := h.logs.FilterMessage("file rescued").Len(); n != 0 {
		t.Errorf("rescued again after the restart: %v", h.logs.FilterMessage("file rescued").All())
	}
}

// TestFindPrior: an earlier rescue is matched by dev, ino and a non-zero
// birth time only, once; among several, the newest.
func TestFindPrior(t *testing.T) {
	k := scanner.Key{Dev: 1, Ino: 2}
	old := &prior{rel: "old", side: relink.Sidecar{BirthTime: 7, Time: time.Unix(100, 0)}}
	newer := &prior{rel: "newer", side: relink.Sidecar{BirthTime: 7, Time: time.Unix(200, 0)}}
	other := &prior{rel: "other", side: relink.Sidecar{BirthTime: 8, Time: time.Unix(300, 0)}}
	x := &priors{}
	reset := func() { x.set(map[scanner.Key][]*prior{k: {old, newer, other}}) }
	for _, tt := range []struct {
		name  string
		key   scanner.Key
		btime int64
		want  *prior
	}{
		{"same file, newest rescue", k, 7, newer},
		{"the other file once born under this number", k, 8, other},
		{"another birth time: a reused number", k, 9, nil},
		{"no birth time: cannot tell", k, 0, nil},
		{"another inode", scanner.Key{Dev: 1, Ino: 3}, 7, nil},
	} {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			reset()
			if got := x.find(tt.key, tt.btime); got != tt.want {
				t.Errorf("want %v, got %v", tt.want, got)
			}
			if tt.want != nil && x.find(tt.key, tt.btime) != nil {
				t.Error("found twice")
			}
		})
	}
}
