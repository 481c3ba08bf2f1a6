package relink

import (
	"bytes"
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
	"github.com/relinkd/relinkd/pkg/scanner"
)

// swapSetup makes, on a tmpfs every user can reach, a directory w that
// anyone may write and a root-owned 0644 decoy outside it, and returns
// the three paths and the decoy's stat.
func swapSetup(t *testing.T) (mnt, w, decoy string, dst unix.Stat_t) {
	t.Helper()
	testfs.RequireRoot(t)
	mnt = testfs.Mount(t, "tmpfs", 64)
	testfs.Reachable(t, mnt)
	w = filepath.Join(mnt, "w")
	must(t, os.Mkdir(w, 0o777))
	must(t, os.Chmod(w, 0o777))
	decoy = filepath.Join(mnt, "etc", "decoy")
	writeFile(t, decoy, []byte("root's decoy, outside every rule\n"))
	must(t, unix.Stat(decoy, &dst))
	return mnt, w, decoy, dst
}

// TestPinSwappedDescriptor: the holder points the candidate's descriptor
// number at another file (dup2(2)) between the scanner's look and the pin,
// or between the scanner's readlink and its stat. Either way the pin is
// refused with ErrIdentity; the same descriptor pins once it is back.
func TestPinSwappedDescriptor(t *testing.T) {
	_, w, decoy, dst := swapSetup(t)
	x := filepath.Join(w, "x")
	writeFile(t, x, []byte("x\n"))
	// FDs: 0 x (deleted), 1 decoy, 2 the number that is flipped.
	h := testproc.Start(t, testproc.Open(x, "r"), testproc.Unlink(x), testproc.Open(decoy, "r"), testproc.Open(decoy, "r"))
	e := newEngine(t, Options{})
	pinErr := func(c scanner.Candidate) error {
		t.Helper()
		p, err := e.Pin(c)
		if err == nil {
			defer p.Close()
			st, _ := fstat(p.FD())
			t.Errorf("pinned dev %d ino %d (decoy is ino %d) for %q", st.Dev, st.Ino, dst.Ino, p.Candidate().Path)
		}
		return err
	}

	h.Do(t, testproc.Dup2(0, 2))
	consistent := candidateOf(t, h.PID, h.FDs[2])
	if string(consistent.Path) != x {
		t.Fatalf("candidate path %q, want %q", consistent.Path, x)
	}
	// The name and the identity from two looks: the name while the
	// number held x, the identity once it held the decoy.
	h.Do(t, testproc.Dup2(1, 2))
	mixed := consistent
	decoyView := candidateOf(t, h.PID, h.FDs[2])
	mixed.Dev, mixed.Ino, mixed.Nlink, mixed.Size = decoyView.Dev, decoyView.Ino, decoyView.Nlink, decoyView.Size
	mixed.Owner, mixed.Group, mixed.Mode, mixed.Linkable = decoyView.Owner, decoyView.Group, decoyView.Mode, decoyView.Linkable

	tests := []struct {
		name string
		c    scanner.Candidate
	}{
		{"swapped after the scan", consistent},
		{"swapped between readlink and stat", mixed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := pinErr(tt.c); !errors.Is(err, ErrIdentity) {
				t.Fatalf("want ErrIdentity, got %v", err)
			}
		})
	}
	// Back on x, the mixed candidate still names the decoy's inode.
	h.Do(t, testproc.Dup2(0, 2))
	if err := pinErr(mixed); !errors.Is(err, ErrIdentity) {
		t.Fatalf("mixed candidate, number back on x: want ErrIdentity, got %v", err)
	}
	p, err := e.Pin(consistent)
	if err != nil {
		t.Fatalf("the consistent candidate must pin once the number is back on x: %v", err)
	}
	defer p.Close()
	got := p.Candidate()
	if got.Key() != consistent.Key() || string(got.Path) != x || got.Owner != 0 || got.Nlink != 0 {
		t.Errorf("pinned identity: want %q dev %d ino %d nlink 0, got %+v", x, consistent.Dev, consistent.Ino, got)
	}
}

// TestPinSwapRace: an unprivileged holder (uid 65534) creates and unlinks
// files in w while flipping one descriptor number between each and a
// root-owned file it can only read, as fast as it can. The scanner sweeps
// it over and over and the engine pins every candidate. The scanner reads
// a descriptor's name and its identity in two calls, so some candidates
// pair a deleted name in w with the decoy's inode; not one pin may be on
// the decoy, and every pin's identity is a deleted x_K.
func TestPinSwapRace(t *testing.T) {
	mnt, w, decoy, dst := swapSetup(t)
	root := filepath.Join(mnt, "rescued")
	const files, each = 16, 150 * time.Millisecond
	h := testproc.StartWith(t, testproc.Options{UID: 65534, GID: 65534},
		testproc.Ready(), testproc.Swapper(w, decoy, files, each, 0), testproc.Exit())
	sc := scanner.New(scanner.Options{}, nil)
	e := New(Options{}, nil)
	decoyKey := scanner.Key{Dev: dst.Dev, Ino: dst.Ino}
	var tries, mixed, pinned, refused, vanished int
	start := time.Now()
	for done := false; !done; {
		select {
		case <-h.Done():
			done = true
		default:
		}
		res, err := sc.SweepPIDs(context.Background(), []int{h.PID})
		must(t, err)
		for _, c := range res.Candidates {
			if c.FD != testproc.SwapFD {
				continue
			}
			tries++
			if c.Key() == decoyKey {
				mixed++
			}
			p, err := e.Pin(c)
			switch {
			case err == nil:
				pinned++
				pc := p.Candidate()
				st, err := fstat(p.FD())
				must(t, err)
				if st.Ino == dst.Ino || pc.Key() == decoyKey || pc.Owner != 65534 || pc.Nlink != 0 ||
					!bytes.HasPrefix(pc.Path, []byte(w+"/x_")) {
					t.Errorf("pin %d: pinned ino %d (decoy %d), identity %q dev %d ino %d owner %d nlink %d",
						pinned, st.Ino, dst.Ino, pc.Path, pc.Dev, pc.Ino, pc.Owner, pc.Nlink)
				}
				_, err = e.Rescue(context.Background(), p, Destination{Root: root, Rel: filepath.Base(string(pc.Path))})
				must(t, err)
				p.Close()
			case errors.Is(err, ErrIdentity):
				refused++
			case errors.Is(err, ErrVanished):
				vanished++
			default:
				t.Errorf("pin: %v", err)
			}
		}
	}
	t.Logf("%d tries in %v: %d candidates had the decoy's identity under a deleted name, %d pinned (all on x_K), %d refused, %d vanished",
		tries, time.Since(start).Round(time.Millisecond), mixed, pinned, refused, vanished)
	// Every rescued file is an x_K, by inode and by content.
	want, err := os.ReadFile(decoy)
	must(t, err)
	rescued := regularFiles(t, root)
	for _, f := range rescued {
		var st unix.Stat_t
		must(t, unix.Stat(f, &st))
		got := readAll(t, f)
		name := strings.SplitN(filepath.Base(f), ".", 2)[0] // x_K, x_K.1 …
		if st.Ino == dst.Ino || bytes.Equal(got, want) || string(got) != name+"\n" {
			t.Errorf("%s: ino %d (decoy %d), content %q", f, st.Ino, dst.Ino, got)
		}
	}
	if len(rescued) != pinned {
		t.Errorf("%d files rescued, want one per pin (%d)", len(rescued), pinned)
	}
	if tries < 1000 || mixed == 0 {
		t.Errorf("the race was not exercised: %d tries, %d mixed candidates", tries, mixed)
	}
}
