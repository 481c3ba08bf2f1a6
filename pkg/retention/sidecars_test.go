package retention

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/relinkd/relinkd/internal/layout"
)

// TestSidecars: every sidecar under a root is handed over with the
// rescued file beside it; a sidecar without its file, a too large one and
// one that is a symlink come with an error, and a symlinked directory is
// not entered.
func TestSidecars(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "root")
	name := "app.log.20261121T203000Z.pid1.fd3"
	mustMkdir(t, filepath.Join(root, "var/log"), filepath.Join(base, "elsewhere"))
	writeFile(t, filepath.Join(root, "var/log", name), "data")
	writeFile(t, filepath.Join(root, "var/log", name+layout.SidecarSuffix), `{"ok":1}`)
	orphan := "gone.20261121T203000Z.pid1.fd4"
	writeFile(t, filepath.Join(root, orphan+layout.SidecarSuffix), `{}`)
	big := "big.20261121T203000Z.pid1.fd5"
	writeFile(t, filepath.Join(root, big), "x")
	writeFile(t, filepath.Join(root, big+layout.SidecarSuffix), strings.Repeat(" ", layout.MaxSidecarSize+1))
	link := "link.20261121T203000Z.pid1.fd6"
	writeFile(t, filepath.Join(root, link), "x")
	writeFile(t, filepath.Join(base, "elsewhere", "target"), `{"planted":1}`)
	if err := os.Symlink(filepath.Join(base, "elsewhere", "target"), filepath.Join(root, link+layout.SidecarSuffix)); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(base, "elsewhere", name), "data")
	writeFile(t, filepath.Join(base, "elsewhere", name+layout.SidecarSuffix), `{"planted":2}`)
	if err := os.Symlink(filepath.Join(base, "elsewhere"), filepath.Join(root, "var/planted")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "notes.relinkd.json"), `{}`) // not a name relinkd writes

	got := map[string]SidecarFile{}
	if err := Sidecars("", root, func(f SidecarFile) { got[f.Rel] = f }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Errorf("want 3 sidecars (the link one is no regular file), got %d: %v", len(got), got)
	}
	f := got["var/log/"+name]
	var st os.FileInfo
	st, err := os.Lstat(filepath.Join(root, "var/log", name))
	if err != nil {
		t.Fatal(err)
	}
	if f.Err != nil || string(f.Data) != `{"ok":1}` || f.Size != 4 || f.Root != root || f.Ino == 0 || f.Size != st.Size() {
		t.Errorf("good sidecar: %+v", f)
	}
	for _, rel := range []string{orphan, big} {
		if f := got[rel]; !errors.Is(f.Err, ErrSidecarFile) || f.Data != nil {
			t.Errorf("%s: want ErrSidecarFile and no data, got %+v", rel, f)
		}
	}
	if err := Sidecars("", filepath.Join(base, "missing"), func(SidecarFile) { t.Error("called for a missing root") }); err != nil {
		t.Errorf("missing root: %v", err)
	}
}
