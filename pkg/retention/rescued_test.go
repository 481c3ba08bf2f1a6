package retention

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/layout"
	"github.com/relinkd/relinkd/internal/testfs"
)

// TestWalkRescued: every rescued file with its sidecar, rescued files
// without one and sidecars without their file are reported; nothing
// reached through a symlink is, other files are left out, and what
// someone other than root could have written is marked.
func TestWalkRescued(t *testing.T) {
	testfs.RequireRoot(t)
	root := filepath.Join(t.TempDir(), "root")
	outside := t.TempDir()
	suffix := layout.Suffix(time.Date(2026, 11, 21, 20, 30, 0, 0, time.UTC), 12, 3)
	mk := func(rel, data string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	mk("var/log/a.log"+suffix, "aaaa", 0o644)
	mk("var/log/a.log"+suffix+layout.SidecarSuffix, `{"path":"/var/log/a.log"}`, 0o600)
	mk("var/log/alone.log"+suffix, "no sidecar", 0o644)
	mk("var/log/gone.log"+suffix+layout.SidecarSuffix, `{}`, 0o600)
	mk("var/log/loose.log"+suffix, "x", 0o644)
	mk("var/log/loose.log"+suffix+layout.SidecarSuffix, `{}`, 0o644)
	mk("var/log/notes.txt", "not relinkd's", 0o644)
	mk("open/b.log"+suffix, "b", 0o644)
	if err := os.Chmod(filepath.Join(root, "open"), 0o777); err != nil {
		t.Fatal(err)
	}
	mk("var/log/fifo.log"+suffix, "f", 0o644)
	if err := unix.Mkfifo(filepath.Join(root, "var/log/fifo.log"+suffix+layout.SidecarSuffix), 0o600); err != nil {
		t.Fatal(err)
	}
	// Symlinks to files and directories outside the root, under names
	// relinkd writes: never followed.
	if err := os.WriteFile(filepath.Join(outside, "secret"+suffix), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "secret"+suffix), filepath.Join(root, "var/log/link.log"+suffix)); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "var/escape")); err != nil {
		t.Fatal(err)
	}

	got := map[string]RescuedFile{}
	var order []string
	if err := WalkRescued("", root, func(f RescuedFile) {
		got[f.Rel] = f
		order = append(order, f.Rel)
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"open/b.log" + suffix,
		"var/log/a.log" + suffix, "var/log/alone.log" + suffix, "var/log/fifo.log" + suffix,
		"var/log/gone.log" + suffix, "var/log/loose.log" + suffix,
	}
	if !slices.Equal(order, want) {
		t.Fatalf("walked\n%q\nwant\n%q", order, want)
	}
	for _, tc := range []struct {
		rel                 string
		hasFile, hasSidecar bool
		sidecarErr          bool
		untrusted           bool
		fileProblem         bool
	}{
		{rel: "var/log/a.log", hasFile: true, hasSidecar: true},
		{rel: "var/log/alone.log", hasFile: true},
		{rel: "var/log/gone.log", hasSidecar: true},
		{rel: "var/log/loose.log", hasFile: true, hasSidecar: true, fileProblem: true},
		{rel: "var/log/fifo.log", hasFile: true, hasSidecar: true, sidecarErr: true},
		{rel: "open/b.log", hasFile: true, untrusted: true},
	} {
		f := got[tc.rel+suffix]
		if f.HasFile != tc.hasFile || f.HasSidecar != tc.hasSidecar || (f.SidecarErr != nil) != tc.sidecarErr ||
			(f.Untrusted != "") != tc.untrusted || (f.HasSidecar && f.SidecarErr == nil && f.SidecarFileProblem() != "") != tc.fileProblem {
			t.Errorf("%s: file %v sidecar %v (err %v) untrusted %q problem %q; want file %v sidecar %v err %v untrusted %v problem %v",
				tc.rel, f.HasFile, f.HasSidecar, f.SidecarErr, f.Untrusted, f.SidecarFileProblem(),
				tc.hasFile, tc.hasSidecar, tc.sidecarErr, tc.untrusted, tc.fileProblem)
		}
	}
	a := got["var/log/a.log"+suffix]
	if string(a.Sidecar) != `{"path":"/var/log/a.log"}` || a.File.Size != 4 || a.File.Ino == 0 || a.Root != root {
		t.Errorf("a.log: %+v", a)
	}
	if err := WalkRescued("", filepath.Join(root, "missing"), func(RescuedFile) { t.Error("called for a missing root") }); err != nil {
		t.Errorf("missing root: %v", err)
	}
}
