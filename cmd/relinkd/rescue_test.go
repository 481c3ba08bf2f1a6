package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
)

// rescueRun runs the real binary's rescue command and returns its stdout
// lines and exit status.
func rescueRun(t *testing.T, args ...string) ([]string, int) {
	t.Helper()
	cmd := exec.Command(relinkdBinary(t), append([]string{"rescue"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	t.Logf("relinkd rescue %v: exit %d\n%s%s", args, code, out, stderr.Bytes())
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return lines, code
}

func TestRescueCommand(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 32)
	keep := filepath.Join(mnt, "srv/app/keep.log")
	other := filepath.Join(mnt, "srv/app/other.dat")
	if err := os.MkdirAll(filepath.Dir(keep), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{keep, other} {
		if err := os.WriteFile(p, []byte("contents of "+p), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	h := testproc.Start(t, testproc.Open(keep, "r"), testproc.Open(other, "r"), testproc.Unlink(keep), testproc.Unlink(other))
	pid := strconv.Itoa(h.PID)

	t.Run("json to dir by glob", func(t *testing.T) {
		to := filepath.Join(mnt, "out1")
		lines, code := rescueRun(t, "--json", "--to", to, "--pid", pid, mnt+"/**/*.log")
		if code != 0 || len(lines) != 1 {
			t.Fatalf("want exit 0 and one line, got %d and %q", code, lines)
		}
		var r rescueLine
		if err := json.Unmarshal([]byte(lines[0]), &r); err != nil {
			t.Fatal(err)
		}
		if r.Path != keep || r.PID != h.PID || r.FD != h.FDs[0] || r.Method != "copy" || r.Bytes != int64(len("contents of "+keep)) {
			t.Errorf("unexpected result %+v", r)
		}
		if !strings.HasPrefix(r.RescuedTo, to+keep+".") {
			t.Errorf("rescued_to %q not under %s", r.RescuedTo, to)
		}
		if b, err := os.ReadFile(r.RescuedTo); err != nil || string(b) != "contents of "+keep {
			t.Errorf("rescued content %q %v", b, err)
		}
		if _, err := os.Stat(r.RescuedTo + ".relinkd.json"); err != nil {
			t.Errorf("no sidecar: %v", err)
		}
	})

	t.Run("default location at the mount root", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "relinkd.yaml")
		if err := os.WriteFile(cfg, []byte("rescue:\n  dirs: []\n  fs_dir: .relinkd\n  min_free: 0%\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		lines, code := rescueRun(t, "--config", cfg, "--pid", pid, "--fd", strconv.Itoa(h.FDs[1]))
		want := other + " -> " + filepath.Join(mnt, ".relinkd", other)
		if code != 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], want) || !strings.HasSuffix(lines[0], "(copy, "+strconv.Itoa(len("contents of "+other))+" bytes)") {
			t.Fatalf("want exit 0 and %q…, got %d and %q", want, code, lines)
		}
	})

	t.Run("rules from the configuration", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "relinkd.yaml")
		yaml := "watch:\n" +
			"  - name: test-srv\n    paths: [\"" + mnt + "/srv/**/*.log\"]\n    action: rescue\n" +
			"  - name: test-report\n    paths: [\"" + mnt + "/srv/**\"]\n    action: report\n" +
			"rescue:\n  dirs: []\n  fs_dir: .relinkd\n  min_free: 0%\n  per_user: {max_files: 0, max_bytes: 0}\n"
		if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		lines, code := rescueRun(t, "--config", cfg, "--json")
		if code != 0 || len(lines) != 1 {
			t.Fatalf("want exit 0 and one line (the report rule rescues nothing), got %d and %q", code, lines)
		}
		var r rescueLine
		if err := json.Unmarshal([]byte(lines[0]), &r); err != nil {
			t.Fatal(err)
		}
		if r.Path != keep || !strings.HasPrefix(r.RescuedTo, filepath.Join(mnt, ".relinkd")+keep+".") {
			t.Fatalf("unexpected result %+v", r)
		}
		var side struct{ Rule *string }
		b, err := os.ReadFile(r.RescuedTo + ".relinkd.json")
		if err == nil {
			err = json.Unmarshal(b, &side)
		}
		if err != nil || side.Rule == nil || *side.Rule != "test-srv" {
			t.Errorf("sidecar rule: %v %s", err, b)
		}
	})

	t.Run("failure exits non-zero", func(t *testing.T) {
		to := filepath.Join(mnt, "out3")
		if err := os.Symlink(t.TempDir(), to); err != nil {
			t.Fatal(err)
		}
		lines, code := rescueRun(t, "--to", to, "--pid", pid)
		if code != 1 || len(lines) != 2 {
			t.Fatalf("want exit 1 and two lines, got %d and %q", code, lines)
		}
		for _, l := range lines {
			if !strings.Contains(l, "not rescued: ") || !strings.Contains(l, "symlink") {
				t.Errorf("line does not say why: %q", l)
			}
		}
	})

	t.Run("usage", func(t *testing.T) {
		if _, code := rescueRun(t, "--fd", "3"); code != 2 {
			t.Errorf("--fd without --pid: exit %d, want 2", code)
		}
	})
}
