package relink

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
)

func readSidecar(t *testing.T, path string) Sidecar {
	t.Helper()
	s, err := ParseSidecar(readAll(t, path))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return s
}

func inodeOf(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(path, &st))
	return st
}

// waitSize waits until path has at least n bytes.
func waitSize(t *testing.T, path string, n int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for inodeOf(t, path).Size < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not reach %d bytes", path, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAdoptFollow: a follow stopped part way (as by a daemon's shutdown)
// leaves its sidecar saying so; a new engine, with a new pin of the same
// file, adopts the rescued file and follows on into it until the writer
// closes the file. The result is one rescued file with everything the
// writer wrote, and a sidecar that says the follow is over.
func TestAdoptFollow(t *testing.T) {
	testfs.RequireRoot(t)
	for _, tt := range []struct {
		fstype string
		method Method
		link   bool // the inode keeps another name: rescued by link
	}{{"ext4", MethodCopy, false}, {"btrfs", MethodReflink, false}, {"ext4", MethodLink, true}} {
		t.Run(tt.fstype+"_"+string(tt.method), func(t *testing.T) {
			mnt := testfs.Mount(t, tt.fstype, 64)
			root := filepath.Join(mnt, ".relinkd")
			src := filepath.Join(mnt, "app.log")
			head := randomBytes(100_003, 11)
			writeFile(t, src, head)
			if tt.link {
				must(t, os.Link(src, filepath.Join(mnt, "other")))
			}
			h, c := holdDeleted(t, src, "a")
			e1 := newEngine(t, Options{FollowPoll: 20 * time.Millisecond, Sidecar: true})
			p1, err := e1.Pin(c)
			must(t, err)
			rs1, err := e1.Rescue(ctx(t), p1, Destination{Root: root, Rel: "app.log", Rule: "logs"})
			res, err := resultOf(rs1, err)
			must(t, err)
			if res.Method != tt.method {
				t.Fatalf("method: want %s, got %s", tt.method, res.Method)
			}
			first := readSidecar(t, res.Sidecar)
			if first.Following || first.BirthTime == 0 || first.RescuedIno != inodeOf(t, res.Path).Ino {
				t.Errorf("sidecar after the rescue: want not following, a birth time and the rescued inode %d, got %+v",
					inodeOf(t, res.Path).Ino, first)
			}

			// The first follow sees 3 chunks, then stops as at shutdown.
			cx, stop := context.WithCancel(ctx(t))
			followed := make(chan error, 1)
			go func() { _, err := rs1.Follow(cx); followed <- err }()
			h.Do(t, testproc.Append(0, 1000, 3, 0))
			waitSize(t, res.Path, int64(len(head)+3000))
			stop()
			if err := <-followed; !errors.Is(err, context.Canceled) {
				t.Fatalf("first follow: want context.Canceled, got %v", err)
			}
			must(t, p1.Close())
			s := readSidecar(t, res.Sidecar)
			if !s.Following {
				t.Fatalf("sidecar after a follow stopped by ctx: want following, got %+v", s)
			}

			// More is written while no engine follows.
			h.Do(t, testproc.Append(0, 1000, 2, 0))
			e2 := newEngine(t, Options{FollowPoll: 20 * time.Millisecond, Sidecar: true})
			p2 := pin(t, e2, candidateOf(t, h.PID, h.FDs[0]))
			rel := strings.TrimPrefix(res.Path, root+"/")
			rs2, err := e2.Adopt(p2, Adoption{Root: root, Rel: rel, Sidecar: s})
			ares, err := resultOf(rs2, err)
			if err != nil {
				t.Fatalf("adopt: %v", err)
			}
			if ares.Path != res.Path || ares.Method != tt.method || ares.Sidecar != res.Sidecar {
				t.Errorf("adopted: want %s by %s, got %+v", res.Path, tt.method, ares)
			}
			go func() {
				h.Do(t, testproc.Append(0, 1000, 5, 20*time.Millisecond))
				h.Exit(t)
			}()
			final, err := rs2.Follow(ctx(t))
			if err != nil {
				t.Fatalf("follow: %v", err)
			}
			<-h.Done()
			want := append(head, appended(1000, 3)...)
			want = append(want, appended(1000, 2)...)
			want = append(want, appended(1000, 5)...)
			if !final.Followed || final.Bytes != int64(len(want)) {
				t.Errorf("follow result: want %d bytes, followed, got %+v", len(want), final)
			}
			mustEqualBytes(t, "followed into the adopted file", want, readAll(t, res.Path))
			last := readSidecar(t, res.Sidecar)
			if last.Following || !last.Followed || last.Bytes != int64(len(want)) || last.PID != c.PID ||
				last.Rule == nil || *last.Rule != "logs" || last.BirthTime != first.BirthTime {
				t.Errorf("sidecar after the adopted follow: got %+v", last)
			}
			if files := regularFiles(t, root); len(files) != 2 {
				t.Errorf("want the rescued file and its sidecar, got %v", files)
			}
		})
	}
}

// TestAdoptRefuses: Adopt takes over nothing that is not the sidecar's
// file: another source, a reused inode number (another birth time), a
// rescued file replaced since, a symlink on the way. The pin is left as
// it was, so it can still be rescued anew.
func TestAdoptRefuses(t *testing.T) {
	testfs.RequireRoot(t)
	eachWalk(t, func(t *testing.T, w walker) {
		mnt := testfs.Mount(t, "ext4", 32)
		root := filepath.Join(mnt, ".relinkd")
		src := filepath.Join(mnt, "a.log")
		writeFile(t, src, []byte("a\n"))
		_, c := holdDeleted(t, src, "a")
		e := newEngine(t, Options{Sidecar: true})
		e.walk = w
		res, err := resultOf(e.Rescue(ctx(t), pin(t, e, c), Destination{Root: root, Rel: "d/a.log"}))
		must(t, err)
		good := readSidecar(t, res.Sidecar)
		rel := strings.TrimPrefix(res.Path, root+"/")

		other := filepath.Join(mnt, "b.log")
		writeFile(t, other, []byte("b\n"))
		_, oc := holdDeleted(t, other, "a")

		tests := []struct {
			name  string
			edit  func(s *Sidecar, a *Adoption)
			setup func(t *testing.T)
			want  error
		}{
			{name: "another source", want: ErrIdentity, edit: func(s *Sidecar, a *Adoption) {}},
			{name: "another birth time", want: ErrIdentity, edit: func(s *Sidecar, a *Adoption) { s.BirthTime++ }},
			{name: "no birth time", want: ErrIdentity, edit: func(s *Sidecar, a *Adoption) { s.BirthTime = 0 }},
			{name: "rescued file replaced", want: ErrSidecar, edit: func(s *Sidecar, a *Adoption) { s.RescuedIno++ }},
			{name: "size differs", want: ErrSidecar, edit: func(s *Sidecar, a *Adoption) { s.Bytes++ }},
			{name: "symlink on the way", want: ErrUnsafePath, edit: func(s *Sidecar, a *Adoption) { a.Rel = "e/" + filepath.Base(rel) },
				setup: func(t *testing.T) { must(t, os.Symlink(filepath.Join(root, "d"), filepath.Join(root, "e"))) }},
			{name: "missing", want: unix.ENOENT, edit: func(s *Sidecar, a *Adoption) { a.Rel = "d/nothing" }},
		}
		for _, tt := range tests {
			t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
				if tt.setup != nil {
					tt.setup(t)
				}
				cand := c
				if tt.name == "another source" {
					cand = oc
				}
				p := pin(t, e, candidateOf(t, cand.PID, cand.FD))
				s, a := good, Adoption{Root: root, Rel: rel}
				tt.edit(&s, &a)
				a.Sidecar = s
				if _, err := e.Adopt(p, a); !errors.Is(err, tt.want) {
					t.Fatalf("want %v, got %v", tt.want, err)
				}
				if _, err := e.Rescue(ctx(t), p, Destination{Root: root, Rel: "again"}); err != nil {
					t.Errorf("rescue after a refused adoption: %v", err)
				}
			})
		}
	})
}
