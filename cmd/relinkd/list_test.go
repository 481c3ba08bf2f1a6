package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/layout"
	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
)

// rescueSetup mounts a filesystem with a rescue root on it, writes a
// configuration whose only root it is, and rescues files with the real
// binary: each path in files is written with its content, held open by one
// holder, deleted and rescued. It returns the configuration, the root and
// what rescue --json said of each file, by path.
func rescueSetup(t *testing.T, fstype string, files map[string]string) (cfg, root string, out map[string]rescueLine) {
	t.Helper()
	mnt := testfs.Mount(t, fstype, 64)
	root = filepath.Join(mnt, "rescued")
	cfg = filepath.Join(t.TempDir(), "relinkd.yaml")
	config := fmt.Sprintf("watch:\n  - name: data\n    paths: [%q]\nrescue:\n  dirs: [%q]\n  fs_dir: \"\"\n", mnt+"/src/**", root)
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	var steps []testproc.Step
	for p, data := range files {
		p = filepath.Join(mnt, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o640); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, 1000, 1001); err != nil {
			t.Fatal(err)
		}
		steps = append(steps, testproc.Open(p, "r"), testproc.Unlink(p))
	}
	h := testproc.Start(t, steps...)
	lines, code := rescueRun(t, "--config", cfg, "--json", "--pid", fmt.Sprint(h.PID), mnt+"/src/**")
	if code != 0 || len(lines) != len(files) {
		t.Fatalf("rescue: exit %d, %d lines, want 0 and %d", code, len(lines), len(files))
	}
	out = map[string]rescueLine{}
	for _, l := range lines {
		var r rescueLine
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		out[strings.TrimPrefix(r.Path, mnt)] = r
	}
	return cfg, root, out
}

// listRun runs `list --json` and returns its objects by rescued path.
func listRun(t *testing.T, args ...string) (map[string]listLine, int) {
	t.Helper()
	out, errOut, code := runBinary(t, append([]string{"list", "--json"}, args...)...)
	got := map[string]listLine{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var r listLine
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("list: %q: %v", l, err)
		}
		got[r.RescuedTo] = r
	}
	if code != 0 {
		t.Logf("list: exit %d: %s", code, errOut)
	}
	return got, code
}

// TestListCommand: list shows what the sidecars of every rescue root say,
// and reports, without believing them, a forged sidecar (one claiming
// another size, one claiming another inode, one not relinkd's by owner and
// mode), a rescued file without a sidecar and a sidecar without its file.
func TestListCommand(t *testing.T) {
	testfs.RequireRoot(t)
	cfg, root, rescued := rescueSetup(t, "tmpfs", map[string]string{
		"/src/app.log": "application log\n", "/src/big.log": "0123456789", "/src/link.log": "l", "/src/mode.log": "m",
	})
	app, big, link, mode := rescued["/src/app.log"], rescued["/src/big.log"], rescued["/src/link.log"], rescued["/src/mode.log"]

	// Forgeries, written by hand.
	edit := func(path string, change func(map[string]any)) {
		t.Helper()
		// Numbers as they are: a float64 would round the 19-digit ones.
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(readFile(t, path+layout.SidecarSuffix)))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		change(m)
		b, _ := json.Marshal(m)
		if err := os.WriteFile(path+layout.SidecarSuffix, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	edit(big.RescuedTo, func(m map[string]any) { m["bytes"] = 3 })                          // another size
	edit(link.RescuedTo, func(m map[string]any) { m["method"] = "link"; m["ino"] = 12345 }) // another inode
	if err := os.Chmod(mode.RescuedTo+layout.SidecarSuffix, 0o644); err != nil {            // not as relinkd writes it
		t.Fatal(err)
	}
	// A rescued file without a sidecar (a month old), and a lone sidecar.
	old := time.Now().Add(-30 * 24 * time.Hour)
	alone := filepath.Join(root, "srv/alone.log"+layout.Suffix(old, 7, 3))
	if err := os.MkdirAll(filepath.Dir(alone), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(alone, []byte("who knows"), 0o600); err != nil {
		t.Fatal(err)
	}
	lone := filepath.Join(root, "srv/lone.log"+layout.Suffix(old, 7, 4))
	if err := os.WriteFile(lone+layout.SidecarSuffix, readFile(t, app.RescuedTo+layout.SidecarSuffix), 0o600); err != nil {
		t.Fatal(err)
	}

	got, code := listRun(t, "--config", cfg)
	if code != 0 {
		t.Fatalf("list: exit %d", code)
	}
	a := got[app.RescuedTo]
	if a.Sidecar != "ok" || a.Path != app.Path || a.Comm != "relinkd.test" || a.PID != app.PID || a.Method != "copy" ||
		a.Bytes == nil || *a.Bytes != int64(len("application log\n")) || a.Rule == nil || *a.Rule != "data" ||
		a.UID == nil || *a.UID != 0 || a.Root != root || a.RescuedAt == "" || a.Problem != "" {
		t.Errorf("app.log: %+v", a)
	}
	for _, tc := range []struct {
		path, status, why string
	}{
		{big.RescuedTo, "forged", "the file has 10 bytes, the sidecar 3"},
		{link.RescuedTo, "forged", "a link of dev"},
		{mode.RescuedTo, "forged", "mode 644"},
		{alone, "missing", "no sidecar"},
		{lone, "orphan", "without its rescued file"},
	} {
		l, ok := got[tc.path]
		if !ok || l.Sidecar != tc.status || !strings.Contains(l.Problem, tc.why) {
			t.Errorf("%s: sidecar %q problem %q, want %q with %q", tc.path, l.Sidecar, l.Problem, tc.status, tc.why)
		}
		if l.Path != "" || l.Method != "" || l.Bytes != nil {
			t.Errorf("%s: the claims of an untrusted sidecar are shown: %+v", tc.path, l)
		}
	}
	if len(got) != 6 {
		t.Errorf("listed %d files, want 6: %v", len(got), got)
	}

	// Globs on the original path; --since on the rescue time.
	if got, _ := listRun(t, "--config", cfg, "**/app.log"); len(got) != 1 || got[app.RescuedTo].Sidecar != "ok" {
		t.Errorf("list GLOB: %v", got)
	}
	if got, _ := listRun(t, "--config", cfg, "--since", "1h"); len(got) != 4 || got[alone].Sidecar != "" || got[lone].Sidecar != "" {
		t.Errorf("list --since 1h lists %d files (want 4, not the month-old ones): %v", len(got), got)
	}

	// The table says what is wrong, one line per file.
	out, _, code := runBinary(t, "list", "--config", cfg)
	if code != 0 || !strings.Contains(out, app.Path) || !strings.Contains(out, "5 of 6 rescued file(s) not as their sidecar says") ||
		!strings.Contains(out, alone+": sidecar missing") || !strings.Contains(out, big.RescuedTo+": sidecar forged") {
		t.Errorf("table:\n%s", out)
	}
	// Usage mistakes.
	for _, args := range [][]string{{"list", "--since", "soon"}, {"list", "[bad"}} {
		if _, _, code := runBinary(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

// TestListLeavesSymlinks: a symlink in a rescue root, to a directory of
// rescued-looking files outside it, is not followed.
func TestListLeavesSymlinks(t *testing.T) {
	testfs.RequireRoot(t)
	cfg, root, _ := rescueSetup(t, "tmpfs", map[string]string{"/src/a.log": "a"})
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "x.log"+layout.Suffix(time.Now(), 1, 2)), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	got, _ := listRun(t, "--config", cfg)
	for p := range got {
		if strings.Contains(p, "escape") {
			t.Errorf("listed %s through a symlink", p)
		}
	}
	if len(got) != 1 {
		t.Errorf("listed %d files, want 1: %v", len(got), got)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func statOf(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}
