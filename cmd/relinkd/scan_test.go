package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
)

// scanRecords runs the real binary's `scan --json` and returns the records
// of one pid, keyed by fd.
func scanRecords(t *testing.T, pid int, args ...string) map[int]map[string]any {
	t.Helper()
	cmd := exec.Command(relinkdBinary(t), append([]string{"scan", "--json"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("relinkd scan: %v\n%s", err, stderr.String())
	}
	recs := map[int]map[string]any{}
	for _, line := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var r map[string]any
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("invalid JSON line %q: %v", line, err)
		}
		if r["summary"] == true {
			continue
		}
		if int(r["pid"].(float64)) == pid {
			recs[int(r["fd"].(float64))] = r
		}
	}
	return recs
}

func TestScanCommand(t *testing.T) {
	testfs.RequireRoot(t)
	dir := testfs.Mount(t, "tmpfs", 16)
	watched := filepath.Join(dir, "watched")
	other := filepath.Join(dir, "other")
	for _, d := range []string{watched, other} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(t.TempDir(), "relinkd.yaml")
	config := fmt.Sprintf("watch:\n  - name: test-logs\n    paths: [%q]\n    action: report\n", watched+"/**")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	odd := filepath.Join(watched, "odd\n\xffname")
	plain := filepath.Join(other, "plain.log")
	if err := os.WriteFile(plain, []byte("plain"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := testproc.Start(t,
		testproc.Open(odd, "w"), testproc.Write(0, "12345"),
		testproc.Open(plain, "r"),
		testproc.Unlink(odd), testproc.Unlink(plain))

	t.Run("rules", func(t *testing.T) {
		recs := scanRecords(t, h.PID, "--config", cfg)
		if len(recs) != 1 {
			t.Fatalf("got %d records for the holder, want only the watched one: %v", len(recs), recs)
		}
		r := recs[h.FDs[0]]
		if r["rule"] != "test-logs" {
			t.Errorf("rule = %v, want test-logs", r["rule"])
		}
		raw, err := base64.StdEncoding.DecodeString(r["path_base64"].(string))
		if err != nil || string(raw) != odd {
			t.Errorf("path_base64 = %q (%v), want %q", raw, err, odd)
		}
		for field, want := range map[string]any{"size": 5.0, "nlink": 0.0, "uid": 0.0, "mode": "0644", "comm": "relinkd.test"} {
			if r[field] != want {
				t.Errorf("%s = %v, want %v", field, r[field], want)
			}
		}
		for _, field := range []string{"dev", "ino", "path", "exe", "start_time", "mnt_id", "flags", "pos"} {
			if _, ok := r[field]; !ok {
				t.Errorf("field %s missing", field)
			}
		}
	})
	t.Run("all", func(t *testing.T) {
		recs := scanRecords(t, h.PID, "--config", cfg, "--all")
		if len(recs) != 2 {
			t.Fatalf("got %d records, want 2", len(recs))
		}
		if r := recs[h.FDs[1]]; r["rule"] != nil || r["path"] != plain {
			t.Errorf("unmatched record: rule %v path %v; want null and %q", r["rule"], r["path"], plain)
		}
	})
	t.Run("table", func(t *testing.T) {
		out, err := exec.Command(relinkdBinary(t), "scan", "--config", cfg, "--all").Output()
		if err != nil {
			t.Fatal(err)
		}
		var rows int
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, fmt.Sprint(h.PID)+" ") {
				rows++
			}
		}
		if rows != 2 {
			t.Errorf("table has %d rows for the holder, want 2 (a newline in a name must not split a row):\n%s", rows, out)
		}
		if !strings.Contains(string(out), strconv.Quote(odd)) {
			t.Errorf("odd name not quoted in table:\n%s", out)
		}
	})
}

func TestScanNoProc(t *testing.T) {
	cmd := exec.Command(relinkdBinary(t), "scan", "--proc", filepath.Join(t.TempDir(), "missing"))
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("scan without /proc: err %v, want exit status 1\n%s", err, out)
	}
	if !strings.Contains(string(out), "open proc root") {
		t.Errorf("message does not say what failed: %s", out)
	}
}

func TestVersionAndUsage(t *testing.T) {
	out, err := exec.Command(relinkdBinary(t), "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "relinkd ") || !strings.Contains(string(out), "go1.") {
		t.Errorf("version: %q %v", out, err)
	}
	err = exec.Command(relinkdBinary(t), "frobnicate").Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Errorf("unknown command: %v, want exit status 2", err)
	}
}

// TestScanTableQuotesComm: a process chooses its own name, so a newline in
// it must not forge a row of the table.
func TestScanTableQuotesComm(t *testing.T) {
	testfs.RequireRoot(t)
	dir := testfs.Mount(t, "tmpfs", 16)
	const comm = "x\n999 evil"
	pid, fd := startCommHolder(t, comm, filepath.Join(dir, "held.log"))

	out, errOut, code := runBinary(t, "scan", "--all")
	if code != 0 {
		t.Fatalf("scan: exit %d: %s", code, errOut)
	}
	var rows []string
	for _, line := range strings.Split(out, "\n") {
		// A real process 999 may exist on a busy host: the forged row
		// is the one that starts with the comm's second line.
		if strings.HasPrefix(line, "999 evil") {
			t.Errorf("forged row %q:\n%s", line, out)
		}
		if strings.HasPrefix(line, strconv.Itoa(pid)+" ") {
			rows = append(rows, line)
		}
	}
	if len(rows) != 1 || !strings.Contains(rows[0], strconv.Quote(comm)) {
		t.Errorf("want one row for pid %d with comm %s, got %q:\n%s", pid, strconv.Quote(comm), rows, out)
	}
	// JSON carries the name exactly.
	if r := scanRecords(t, pid, "--all")[fd]; r["comm"] != comm {
		t.Errorf("scan --json comm = %q, want %q", r["comm"], comm)
	}
}

// TestHelp: -h and --help print the command's usage on stdout and exit 0.
func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string // in stdout
	}{
		{"scan -h", []string{"scan", "-h"}, "-json"},
		{"scan --help", []string{"scan", "--help"}, "-all"},
		{"rescue -h", []string{"rescue", "-h"}, "-to DIR"},
		{"rescue --help after a glob", []string{"rescue", "/x/**", "--help"}, "GLOB"},
		{"run -h", []string{"run", "-h"}, "-config"},
		{"doctor --help", []string{"doctor", "--help"}, "-config"},
		{"check-config -h", []string{"check-config", "-h"}, "FILE"},
		{"version -h", []string{"version", "-h"}, "usage: relinkd version"},
		{"list -h", []string{"list", "-h"}, "-since DURATION"},
		{"restore --help", []string{"restore", "--help"}, "-dry-run"},
		{"help", []string{"help"}, "commands:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runBinary(t, tc.args...)
			if code != 0 || !strings.HasPrefix(out, "usage: relinkd") || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d, want 0; stdout lacks %q:\n%s\nstderr:\n%s", code, tc.want, out, errOut)
			}
		})
	}
	t.Run("unknown flag", func(t *testing.T) {
		_, errOut, code := runBinary(t, "scan", "--bogus")
		if code != 2 || !strings.Contains(errOut, "-bogus") {
			t.Errorf("exit %d, want 2, stderr naming the flag:\n%s", code, errOut)
		}
	})
}

// TestScanSummary: scan ends with what the deleted-but-open files hold per
// filesystem: the sum of st_blocks×512 of the distinct inodes (a sparse
// file counts its blocks, not its size; an inode held on two descriptors
// and by two processes counts once), and the holders, largest first.
func TestScanSummary(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "ext4", 64)
	sparse, data, small := filepath.Join(mnt, "sparse"), filepath.Join(mnt, "data"), filepath.Join(mnt, "small")
	if err := os.WriteFile(data, bytes.Repeat([]byte("d"), 300_000), 0o644); err != nil {
		t.Fatal(err)
	}
	big := testproc.Start(t,
		testproc.Open(sparse, "w"), testproc.Write(0, "12345"), testproc.Truncate(0, 256<<20),
		testproc.Open(data, "r"), testproc.Open(data, "r"),
		testproc.Unlink(sparse), testproc.Unlink(data))
	other := testproc.Start(t, testproc.Open(small, "w"), testproc.Write(0, "x"), testproc.Unlink(small))
	// The other holder also holds big's deleted data file, through big's fd.
	other2 := testproc.Start(t, testproc.Open(fmt.Sprintf("/proc/%d/fd/%d", big.PID, big.FDs[1]), "r"))

	// What the test's files hold: each inode once.
	var want uint64
	inodes := map[uint64]bool{}
	for _, h := range []struct {
		pid int
		fds []int
	}{{big.PID, big.FDs}, {other.PID, other.FDs}} {
		for _, fd := range h.fds {
			var st unix.Stat_t
			if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", h.pid, fd), &st); err != nil {
				t.Fatal(err)
			}
			if !inodes[st.Ino] {
				inodes[st.Ino] = true
				want += uint64(st.Blocks) * 512
			}
		}
	}

	out, errOut, code := runBinary(t, "scan", "--all", "--json")
	if code != 0 {
		t.Fatalf("scan: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var sum spaceSummary
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil || !sum.Summary {
		t.Fatalf("last line is not the summary (%v): %s", err, lines[len(lines)-1])
	}
	var fs *fsSummary
	for i := range sum.Filesystems {
		if sum.Filesystems[i].MountPoint == mnt {
			fs = &sum.Filesystems[i]
		}
	}
	if fs == nil {
		t.Fatalf("no summary for %s: %+v", mnt, sum.Filesystems)
	}
	if fs.Files != 3 || fs.Allocated != want || fs.FSType != "ext4" {
		t.Errorf("%s: %d files, %d bytes allocated (%s); want 3 files, %d bytes (the sum of st_blocks×512), ext4", mnt, fs.Files, fs.Allocated, fs.FSType, want)
	}
	if fs.Size < 256<<20 || fs.Allocated >= 1<<20 {
		t.Errorf("apparent size %d, allocated %d: the sparse file must count its blocks, not its size", fs.Size, fs.Allocated)
	}
	if len(fs.Holders) != 3 || fs.Holders[0].PID != big.PID || fs.Holders[0].Files != 2 ||
		fs.Holders[1].PID != other2.PID || fs.Holders[2].PID != other.PID {
		t.Errorf("holders %+v: want pid %d (2 files) first, then %d (the data file), then %d", fs.Holders, big.PID, other2.PID, other.PID)
	}

	// The table ends with the same summary.
	out, _, code = runBinary(t, "scan", "--all")
	if code != 0 || !strings.Contains(out, "held by deleted-but-open files") || !strings.Contains(out, mnt) {
		t.Errorf("table output lacks the summary for %s:\n%s", mnt, out)
	}
}
