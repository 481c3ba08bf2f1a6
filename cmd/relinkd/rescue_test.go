package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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

// writeConfig writes a configuration file for one test and returns its path.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "relinkd.yaml")
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// decodeLines decodes --json output into rescueLines.
func decodeLines(t *testing.T, lines []string) []rescueLine {
	t.Helper()
	var rs []rescueLine
	for _, l := range lines {
		var r rescueLine
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("line %q is not JSON: %v", l, err)
		}
		rs = append(rs, r)
	}
	return rs
}

// TestRescueFlagsAnywhere: flags after a glob are flags, and everything
// after "--" is a glob.
func TestRescueFlagsAnywhere(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 32)
	log := filepath.Join(mnt, "a.log")
	dat := filepath.Join(mnt, "b.dat")
	h := testproc.Start(t, testproc.Open(log, "w"), testproc.Write(0, "log data"),
		testproc.Open(dat, "w"), testproc.Write(1, "dat data"), testproc.Unlink(log), testproc.Unlink(dat))
	pid := strconv.Itoa(h.PID)
	cfg := writeConfig(t, "rescue:\n  dirs: []\n  fs_dir: .relinkd\n  min_free: 0%\n")

	t.Run("flags after a glob", func(t *testing.T) {
		to := filepath.Join(mnt, "out1")
		lines, code := rescueRun(t, "--config", cfg, mnt+"/*.log", "--to", to, "--json", "--pid", pid)
		if code != 0 || len(lines) != 1 {
			t.Fatalf("want exit 0 and one line, got %d and %q", code, lines)
		}
		r := decodeLines(t, lines)[0]
		if r.Path != log || r.PID != h.PID || !strings.HasPrefix(r.RescuedTo, to+log+".") {
			t.Errorf("unexpected result %+v", r)
		}
	})
	t.Run("globs after --", func(t *testing.T) {
		to := filepath.Join(mnt, "out2")
		lines, code := rescueRun(t, "--pid", pid, "--to", to, "--", mnt+"/*.dat", "--json")
		if code != 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], dat+" -> "+to+dat+".") {
			t.Fatalf("want exit 0 and one text line (--json is a glob here), got %d and %q", code, lines)
		}
	})
	t.Run("glob starting with a dash", func(t *testing.T) {
		out, errOut, code := runBinary(t, "rescue", "--pid", pid, "--", "-x")
		if code != 1 || out != "" || !strings.Contains(errOut, `no deleted-open file matches --pid `+pid+` "-x"`) {
			t.Errorf("after --: exit %d, want 1 and no match:\n%s%s", code, out, errOut)
		}
		if _, errOut, code := runBinary(t, "rescue", "--pid", pid, "-x"); code != 2 {
			t.Errorf("without --: exit %d, want 2 (unknown flag):\n%s", code, errOut)
		}
	})
}

// TestRescueToKeepsLimits: without a selection, rescue decides as the
// daemon does, limits included; --to changes only where files go.
func TestRescueToKeepsLimits(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 32)
	big := filepath.Join(mnt, "big.log")
	small1 := filepath.Join(mnt, "small1.log")
	small2 := filepath.Join(mnt, "small2.log")
	h := testproc.Start(t,
		testproc.Open(big, "w"), testproc.Append(0, 1_000_000, 3, 0),
		testproc.Open(small1, "w"), testproc.Write(1, "one"),
		testproc.Open(small2, "w"), testproc.Write(2, "two"),
		testproc.Unlink(big), testproc.Unlink(small1), testproc.Unlink(small2))
	cfg := writeConfig(t, "watch:\n  - name: test-limits\n    paths: [\""+mnt+"/*.log\"]\n    action: rescue\n"+
		"rescue:\n  dirs: []\n  fs_dir: .relinkd\n  min_free: 0%\n  max_file_size: 1MiB\n"+
		"  per_user: {max_files: 1, max_bytes: 0, window: 1h}\n")
	to := filepath.Join(mnt, "out")

	lines, code := rescueRun(t, "--config", cfg, "--to", to, "--json")
	if code != 0 {
		t.Fatalf("exit %d, want 0", code)
	}
	got := map[string]rescueLine{}
	for _, r := range decodeLines(t, lines) {
		if r.PID == h.PID {
			got[r.Path] = r
		}
	}
	if len(got) != 3 {
		t.Fatalf("want a line for each of the 3 files, got %+v", got)
	}
	if r := got[big]; !strings.HasPrefix(r.Skipped, "size: ") || r.RescuedTo != "" {
		t.Errorf("3 MB file above max_file_size 1MiB: got %+v, want skipped for size", r)
	}
	var rescued, quota int
	for _, p := range []string{small1, small2} {
		r := got[p]
		switch {
		case strings.HasPrefix(r.RescuedTo, to+p+"."):
			rescued++
		case strings.HasPrefix(r.Skipped, "quota: "):
			quota++
		default:
			t.Errorf("%s: got %+v, want rescued into %s or skipped for quota", p, r, to)
		}
	}
	if rescued != 1 || quota != 1 {
		t.Errorf("per_user.max_files 1: %d rescued, %d skipped for quota; want 1 and 1", rescued, quota)
	}
	if _, err := os.Stat(filepath.Join(mnt, ".relinkd")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("--to must replace the configured location, but %s/.relinkd: %v", mnt, err)
	}

	// An unusable --to is a failure, not a policy skip.
	link := filepath.Join(mnt, "link")
	if err := os.Symlink(t.TempDir(), link); err != nil {
		t.Fatal(err)
	}
	lines, code = rescueRun(t, "--config", cfg, "--to", link)
	var refused int
	for _, l := range lines {
		if strings.Contains(l, "not rescued: --to "+link+" refused as a rescue root") {
			refused++
		}
	}
	if code != 1 || refused != 2 {
		t.Errorf("symlink --to: exit %d with %d refusals, want 1 and 2 (the small files): %q", code, refused, lines)
	}
}

// TestRescueFollowInterrupted: SIGINT or SIGTERM during --follow ends the
// follow, not the rescue: the file is reported rescued and exists.
func TestRescueFollowInterrupted(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 32)
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
		json bool
	}{
		{"SIGINT json", syscall.SIGINT, true},
		{"SIGTERM text", syscall.SIGTERM, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(mnt, strings.ReplaceAll(tc.name, " ", "-")+".log")
			const data = "written before the rescue"
			h := testproc.Start(t, testproc.Open(path, "w"), testproc.Write(0, data), testproc.Unlink(path))
			to := filepath.Join(mnt, "out")
			args := []string{"rescue", "--follow", "--log-level", "info", "--to", to, "--pid", strconv.Itoa(h.PID)}
			if tc.json {
				args = append(args, "--json")
			}
			stdout, code := runUntilRescued(t, tc.sig, args...)
			if code != 0 {
				t.Errorf("exit %d, want 0: the file was rescued", code)
			}
			lines := strings.Split(strings.TrimSpace(stdout), "\n")
			if len(lines) != 1 {
				t.Fatalf("want one line, got %q", lines)
			}
			var dest string
			if tc.json {
				r := decodeLines(t, lines)[0]
				if r.Error != "" || !r.FollowStopped || r.Followed || r.Bytes != int64(len(data)) {
					t.Errorf("unexpected result %+v", r)
				}
				dest = r.RescuedTo
			} else {
				prefix := path + " -> "
				suffix := " (copy, " + strconv.Itoa(len(data)) + " bytes; follow stopped early)"
				if !strings.HasPrefix(lines[0], prefix) || !strings.HasSuffix(lines[0], suffix) {
					t.Fatalf("line %q, want %q…%q", lines[0], prefix, suffix)
				}
				dest = strings.TrimSuffix(strings.TrimPrefix(lines[0], prefix), suffix)
			}
			if !strings.HasPrefix(dest, to+path+".") {
				t.Fatalf("rescued to %q, not under %s", dest, to)
			}
			if b, err := os.ReadFile(dest); err != nil || string(b) != data {
				t.Errorf("rescued content %q %v", b, err)
			}
			if _, err := os.Stat(dest + ".relinkd.json"); err != nil {
				t.Errorf("no sidecar: %v", err)
			}
		})
	}
}

// runUntilRescued runs the real binary with args, sends it sig once its
// log says "file rescued", and returns its stdout and exit status.
func runUntilRescued(t *testing.T, sig syscall.Signal, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(relinkdBinary(t), args...)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Never hang the test run: a binary that does not get there is killed.
	timer := time.AfterFunc(30*time.Second, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	var log strings.Builder
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		log.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), `"msg":"file rescued"`) {
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	_, _ = io.Copy(&log, stderr)
	err = cmd.Wait()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	t.Logf("relinkd %v: exit %d\n%s%s", args, code, stdout.Bytes(), log.String())
	return stdout.String(), code
}

// TestRescueJSONNonUTF8: a name that is not UTF-8 keeps its exact bytes
// in path_base64 and rescued_to_base64, as in `scan --json`.
func TestRescueJSONNonUTF8(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 32)
	odd := filepath.Join(mnt, "odd\xffname.log")
	plain := filepath.Join(mnt, "plain.log")
	h := testproc.Start(t, testproc.Open(odd, "w"), testproc.Write(0, "odd"),
		testproc.Open(plain, "w"), testproc.Write(1, "plain"), testproc.Unlink(odd), testproc.Unlink(plain))
	to := filepath.Join(mnt, "out")
	lines, code := rescueRun(t, "--json", "--to", to, "--pid", strconv.Itoa(h.PID))
	if code != 0 || len(lines) != 2 {
		t.Fatalf("want exit 0 and two lines, got %d and %q", code, lines)
	}
	for _, l := range lines {
		var r map[string]any
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		b64, hasPath := r["path_base64"].(string)
		b64To, hasTo := r["rescued_to_base64"].(string)
		switch r["fd"] {
		case float64(h.FDs[1]):
			if hasPath || hasTo || r["path"] != plain {
				t.Errorf("valid UTF-8 name: no base64 fields expected: %s", l)
			}
		case float64(h.FDs[0]):
			raw, err := base64.StdEncoding.DecodeString(b64)
			if !hasPath || err != nil || string(raw) != odd {
				t.Errorf("path_base64 = %q (%v), want %q: %s", raw, err, odd, l)
			}
			if want := strings.ToValidUTF8(odd, "\uFFFD"); r["path"] != want {
				t.Errorf("path = %q, want %q", r["path"], want)
			}
			dest, err := base64.StdEncoding.DecodeString(b64To)
			if !hasTo || err != nil || !strings.HasPrefix(string(dest), to+odd+".") {
				t.Fatalf("rescued_to_base64 = %q (%v), want under %q: %s", dest, err, to+odd, l)
			}
			if b, err := os.ReadFile(string(dest)); err != nil || string(b) != "odd" {
				t.Errorf("rescued file %q: %q %v", dest, b, err)
			}
		default:
			t.Errorf("unexpected line %s", l)
		}
	}
}

// TestRescueExitCodes: an explicit selection that matches nothing fails
// (1), a bad --pid or --fd is a usage error (2), help succeeds (0).
func TestRescueExitCodes(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 16)
	path := filepath.Join(mnt, "held.log")
	h := testproc.Start(t, testproc.Open(path, "w"), testproc.Unlink(path))
	pid := strconv.Itoa(h.PID)
	for _, tc := range []struct {
		name      string
		args      []string
		code      int
		errSubstr string
	}{
		{"no such fd", []string{"--pid", pid, "--fd", "999"}, 1, "no deleted-open file matches --pid " + pid + " --fd 999"},
		{"glob matching nothing", []string{"--pid", pid, mnt + "/none/**"}, 1, "no deleted-open file matches"},
		{"negative pid", []string{"--pid", "-5"}, 2, "--pid -5"},
		{"zero pid", []string{"--pid=0"}, 2, "--pid 0"},
		{"negative fd", []string{"--pid", pid, "--fd", "-2"}, 2, "--fd -2"},
		{"help", []string{"--pid", pid, "-h"}, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runBinary(t, append([]string{"rescue"}, tc.args...)...)
			if code != tc.code || !strings.Contains(errOut, tc.errSubstr) {
				t.Errorf("exit %d, want %d and stderr with %q:\n%s%s", code, tc.code, tc.errSubstr, out, errOut)
			}
			if _, err := os.Stat(filepath.Join(mnt, ".relinkd")); err == nil {
				t.Errorf("something was rescued")
			}
		})
	}
}

// TestRescueSwappedDescriptor: `relinkd rescue`, run over and over while
// an unprivileged holder (uid 65534) flips one descriptor number between
// a deleted file in the watched directory and a root-owned file outside
// every rule (testproc.Swapper), rescues x_K files only, whether the
// rules choose (a full sweep) or a selection does (--pid and a glob, one
// process swept, so many more runs): a look that paired the watched name
// with the decoy's inode is skipped as an identity change, and nothing in
// the rescue root is the decoy, by inode or by content.
func TestRescueSwappedDescriptor(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 256)
	testfs.Reachable(t, mnt)
	watched, root := filepath.Join(mnt, "w"), filepath.Join(mnt, "rescued")
	if err := os.Mkdir(watched, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(watched, 0o777); err != nil {
		t.Fatal(err)
	}
	decoy := filepath.Join(mnt, "decoy")
	secret := []byte("root's file, outside every rule\n")
	if err := os.WriteFile(decoy, secret, 0o644); err != nil {
		t.Fatal(err)
	}
	var dst syscall.Stat_t
	if err := syscall.Stat(decoy, &dst); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "relinkd.yaml")
	yaml := "watch:\n  - name: w\n    paths: [\"" + watched + "/**\"]\n    action: rescue\n" +
		"rescue:\n  dirs: [\"" + root + "\"]\n  min_free: 0%\n  per_user: {max_files: 0, max_bytes: 0}\n"
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	h := testproc.StartWith(t, testproc.Options{UID: 65534, GID: 65534},
		testproc.Ready(), testproc.Swapper(watched, decoy, 1500, 4*time.Millisecond, 0), testproc.Exit())
	start := time.Now()
	var runs, looks, refused, rescued int
	// Each run rescues the x_K held then: at most maxRuns of them (and
	// their sidecars) fill the tmpfs.
	const maxRuns = 5000
	for done := false; !done && runs < maxRuns; runs++ {
		select {
		case <-h.Done():
			done = true
		default:
		}
		args := []string{"--config", cfg, "--json", "--pid", strconv.Itoa(h.PID), watched + "/**"}
		if runs%50 == 0 {
			args = args[:3]
		}
		var out, errs bytes.Buffer
		// A selection that matches nothing fails the run: between two
		// files, or once the holder is gone.
		if err := cmdRescue(t.Context(), env{stdout: &out, stderr: &errs}, args); err != nil && (out.Len() > 0 || len(args) == 3) {
			t.Fatalf("run %d: %v\n%s%s", runs, err, out.Bytes(), errs.Bytes())
		}
		for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			if l == "" {
				continue
			}
			var r rescueLine
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatal(err)
			}
			if r.PID != h.PID {
				continue
			}
			if !strings.HasPrefix(r.Path, watched+"/x_") {
				t.Errorf("run %d: %+v", runs, r)
			}
			if r.RescuedTo != "" {
				rescued++
			}
			if r.FD == testproc.SwapFD {
				looks++
				if strings.Contains(r.Skipped, "identity changed") {
					refused++
				}
			}
		}
	}
	files := rescueRoot(t, root)
	for _, f := range files {
		var st syscall.Stat_t
		if err := syscall.Stat(f, &st); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Dev == dst.Dev && st.Ino == dst.Ino || bytes.Equal(b, secret) {
			t.Errorf("%s is the decoy (ino %d, %q)", f, st.Ino, b)
		}
	}
	if err := syscall.Stat(decoy, &dst); err != nil || dst.Nlink != 1 {
		t.Errorf("the decoy has %d links, want 1 (%v)", dst.Nlink, err)
	}
	t.Logf("%d runs in %v: %d looks at the flipped descriptor, %d refused as identity changes; %d x_K rescued, 0 decoys among %d files",
		runs, time.Since(start).Round(time.Millisecond), looks, refused, rescued, len(files))
	if refused == 0 || rescued != len(files) {
		t.Errorf("want refusals and one file per rescue: %d refused, %d rescued, %d files", refused, rescued, len(files))
	}
}

// rescueRoot lists the rescued files under root, sidecars excluded.
func rescueRoot(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && !strings.HasSuffix(p, ".relinkd.json") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return out
}

// TestRescueLogsEachEventOnce: with --log-level, `relinkd rescue` logs
// the daemon's events through the same pipeline, one per file and
// outcome: a failure is one "rescue failed" (with its method), a policy
// skip one "rescue skipped", a rescue one "file rescued".
func TestRescueLogsEachEventOnce(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 32)
	small, big := filepath.Join(mnt, "small.log"), filepath.Join(mnt, "big.log")
	h := testproc.Start(t, testproc.Open(small, "w"), testproc.Write(0, "small"),
		testproc.Open(big, "w"), testproc.Append(1, 4096, 1, 0), testproc.Unlink(small), testproc.Unlink(big))
	pid := strconv.Itoa(h.PID)
	link := filepath.Join(mnt, "link")
	if err := os.Symlink(t.TempDir(), link); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, "watch:\n  - name: test-once\n    paths: [\""+mnt+"/*.log\"]\n    action: rescue\n"+
		"rescue:\n  dirs: []\n  fs_dir: .relinkd\n  min_free: 0%\n  max_file_size: 1KiB\n"+
		"  per_user: {max_files: 0, max_bytes: 0}\n")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want map[string]int // events by msg, for the holder's files
	}{
		{"failures", []string{"--to", link, "--pid", pid}, 1, map[string]int{"rescue failed": 2}},
		{"rules", []string{"--config", cfg}, 0, map[string]int{"file rescued": 1, "rescue skipped": 1}},
		{"explicit", []string{"--config", cfg, "--to", filepath.Join(mnt, "out"), "--pid", pid}, 0,
			map[string]int{"file rescued": 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runBinary(t, append([]string{"rescue", "--log-level", "info"}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d:\n%s%s", code, tc.code, out, errOut)
			}
			got := map[string]int{}
			for _, l := range strings.Split(strings.TrimSpace(errOut), "\n") {
				var ev map[string]any
				if json.Unmarshal([]byte(l), &ev) != nil || ev["pid"] != float64(h.PID) {
					continue
				}
				msg, _ := ev["msg"].(string)
				switch msg {
				case "file rescued", "rescue skipped", "rescue failed", "rescue cancelled":
					got[msg]++
				}
				if _, ok := ev["method"]; msg == "rescue failed" && !ok {
					t.Errorf("rescue failed without its method: %s", l)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("events %v, want %v:\n%s%s", got, tc.want, out, errOut)
			}
		})
	}
}
