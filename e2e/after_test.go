package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testcontainer"
	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
)

// sqliteClient is a real SQLite client (python3's sqlite3 module) that
// writes a database in WAL mode: the first rows are checkpointed into the
// database file, the rest stay in the -wal file only (autocheckpoint off).
// It prints "ready" once every row is committed, then idles holding the
// database, its -wal and its -shm open until it is killed.
const sqliteClient = `
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
con.execute("PRAGMA wal_autocheckpoint=0")
con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
for i in range(500):
    con.execute("INSERT INTO t (v) VALUES (?)", ("checkpointed %d " % i + "x" * 200,))
con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
for i in range(500):
    con.execute("INSERT INTO t (v) VALUES (?)", ("in the wal %d " % i + "y" * 200,))
print("ready", flush=True)
sys.stdin.read()
`

// sqliteCheck opens a database read-write (as an application would) and
// prints its integrity check, its row count and a checksum of the rows.
const sqliteCheck = `
import sqlite3, sys, hashlib
con = sqlite3.connect(sys.argv[1])
print(con.execute("PRAGMA integrity_check").fetchone()[0])
print(con.execute("SELECT count(*) FROM t").fetchone()[0])
h = hashlib.sha256()
for (i, v) in con.execute("SELECT id, v FROM t ORDER BY id"):
    h.update(("%d %s\n" % (i, v)).encode())
print(h.hexdigest())
`

// TestSQLiteRestore: a database in WAL mode, its -wal and -shm deleted
// while a real client holds them open, rescued by the daemon and restored
// side by side by `relinkd restore --to`, opens in SQLite with every row
// committed before the deletion, its integrity intact.
func TestSQLiteRestore(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "python3")
	if err := exec.Command("python3", "-c", "import sqlite3").Run(); err != nil {
		testfs.Skip(t, "needs python3's sqlite3 module")
	}
	mnt := testfs.Mount(t, "ext4", 64)
	watched, rescued := filepath.Join(mnt, "srv/app"), filepath.Join(mnt, "rescued")
	mkdirs(t, watched)
	cfg := writeConfig(t, strings.Replace(baseConfig("1h", true, rule("db", "rescue", []string{watched + "/**"}), rescued),
		"rescue:\n", "rescue:\n  fs_dir: \"\"\n", 1))
	d := startDaemon(t, cfg)

	db := filepath.Join(watched, "app.db")
	startProg(t, "python3", "-c", sqliteClient, db)
	// What the rows are, read by a second client while the first still
	// holds the database (WAL lets readers in).
	want := runPython(t, sqliteCheck, db)
	if !strings.HasPrefix(want, "ok\n1000\n") {
		t.Fatalf("the database before deletion: %q", want)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if fi, err := os.Stat(db + suffix); err != nil || fi.Size() == 0 {
			t.Fatalf("%s%s: %v (size %v): the rows must be in the WAL", db, suffix, err, fi)
		}
	}
	files := []string{db, db + "-wal", db + "-shm"}
	for _, f := range files {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range files {
		ev := d.Wait("rescue of "+f, 30*time.Second, Rescued(f))
		t.Logf("%s -> %s (%s, %v bytes)", f, ev.str("rescued_to"), ev.str("method"), ev["bytes"])
	}

	// list shows all three, each with a sidecar it trusts.
	out := runRelinkd(t, 0, "list", "--config", cfg, "--json", watched+"/**")
	var listed int
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("list: %q: %v", l, err)
		}
		if r["sidecar"] != "ok" || r["rule"] != "db" || r["comm"] != "python3" {
			t.Errorf("list: %s", l)
		}
		listed++
	}
	if listed != 3 {
		t.Fatalf("list shows %d files, want 3:\n%s", listed, out)
	}

	// Restored by naming the database alone: its -wal and -shm come with
	// it, side by side, under their original names.
	newDir := filepath.Join(mnt, "restored")
	out = runRelinkd(t, 0, "restore", "--config", cfg, "--to", newDir, db)
	t.Logf("relinkd restore:\n%s", out)
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(newDir, filepath.Base(f))); err != nil {
			t.Errorf("not restored: %v", err)
		}
	}
	if got := runPython(t, sqliteCheck, filepath.Join(newDir, "app.db")); got != want {
		t.Errorf("the restored database: %q, want %q (integrity ok, every row, the same rows)", got, want)
	}
}

// runPython runs a python3 script with arguments and returns its output.
func runPython(t *testing.T, script string, args ...string) string {
	t.Helper()
	cmd := exec.Command("python3", append([]string{"-c", script}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3: %v\n%s", err, stderr.Bytes())
	}
	return string(out)
}

// runRelinkd runs the binary and returns its stdout, failing the test
// unless it exits with code.
func runRelinkd(t *testing.T, code int, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	got := 0
	if ee, ok := err.(*exec.ExitError); ok {
		got = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if got != code {
		t.Fatalf("relinkd %v: exit %d, want %d\n%s%s", args, got, code, out, stderr.Bytes())
	}
	return string(out)
}

// TestDeletedOpenMetric: the daemon exports what deleted-but-open files
// hold on disk per filesystem at each full sweep: st_blocks×512, each
// inode once, a sparse file by its blocks; and drops the series once
// nothing is held there.
func TestDeletedOpenMetric(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 64)
	watched, rescued := filepath.Join(mnt, "w"), filepath.Join(mnt, "rescued")
	mkdirs(t, watched)
	// Report only: the metric counts what is held, rescued or not.
	cfg := baseConfig("1s", false, rule("w", "report", []string{watched + "/**"}), rescued) + "metrics:\n  listen: \"127.0.0.1:0\"\n"
	d := startDaemon(t, writeConfig(t, cfg))
	addr := d.Wait("metrics listening", 5*time.Second, Msg("metrics listening")).str("listen")

	sparse := filepath.Join(watched, "sparse")
	h := startShell(t, `exec 3<>"$1" 4<"$1"; printf 12345 >&3; truncate -s 100M "$1"; rm "$1"; echo ready; exec sleep 600`, sparse)
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/3", h.PID()), &st); err != nil {
		t.Fatal(err)
	}
	want := float64(st.Blocks * 512)
	if want == 0 || want >= 100<<20 {
		t.Fatalf("st_blocks×512 = %v: want a few blocks", want)
	}
	series := fmt.Sprintf("relinkd_deleted_open_bytes{mountpoint=%q}", mnt)
	waitMetric(t, addr, series, func(v float64, ok bool) bool { return ok && v == want })
	_ = h.cmd.Process.Kill()
	waitMetric(t, addr, series, func(_ float64, ok bool) bool { return !ok })
}

// waitMetric scrapes addr until the value of series (ok: present)
// satisfies cond, for at most 15 s (full sweeps run every second).
func waitMetric(t *testing.T, addr, series string, cond func(v float64, ok bool) bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		v, ok := 0.0, false
		for _, line := range strings.Split(string(body), "\n") {
			if s, found := strings.CutPrefix(line, series+" "); found {
				if v, err = strconv.ParseFloat(s, 64); err != nil {
					t.Fatalf("%s: %q", series, s)
				}
				ok = true
			}
		}
		if cond(v, ok) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v (present %v) after 15 s", series, v, ok)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestContainerListRestore: a file deleted in a container, rescued by the
// daemon into container_dir under the container's id, is listed with its
// container and its path in the container's view; restore will not put it
// at that path on the host, and puts it where --to says.
func TestContainerListRestore(t *testing.T) {
	ct := testcontainer.New(t, testcontainer.Options{Cgroup: testcontainer.Docker})
	dir := t.TempDir()
	containers := filepath.Join(dir, "containers")
	cfg := writeConfig(t, `
scan: {interval: 1s, events: true}
watch:
  - name: app
    paths: ["/var/log/app/**"]
rescue:
  dirs: ["`+filepath.Join(dir, "rescued")+`"]
  container_dir: "`+containers+`"
  min_free: 0
`)
	d := startDaemon(t, cfg)
	if err := os.MkdirAll(ct.Path("/var/log/app"), 0o755); err != nil {
		t.Fatal(err)
	}
	data := content("container", 100_000)
	if err := os.WriteFile(ct.Path("/var/log/app/x.log"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	ct.Start(t, testproc.Open("/var/log/app/x.log", "r"), testproc.Unlink("/var/log/app/x.log"))
	to := d.Wait("file rescued", 15*time.Second, Rescued("/var/log/app/x.log")).str("rescued_to")

	out := runRelinkd(t, 0, "list", "--config", cfg, "--json", "/var/log/app/**")
	var r map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
		t.Fatalf("list: %q: %v", out, err)
	}
	if r["sidecar"] != "ok" || r["container_id"] != ct.ID || r["path"] != "/var/log/app/x.log" || r["rescued_to"] != to {
		t.Errorf("list: %s", out)
	}
	out = runRelinkd(t, 1, "restore", "--config", cfg, "/var/log/app/x.log")
	if !strings.Contains(out, "container's view") {
		t.Errorf("restore under the container's path on the host: %s", out)
	}
	if _, err := os.Stat("/var/log/app/x.log"); err == nil {
		t.Errorf("restored onto the host's /var/log/app")
	}
	back := filepath.Join(dir, "back", "x.log")
	runRelinkd(t, 0, "restore", "--config", cfg, "--to", back, to)
	if sha(t, back) != shaBytes(data) {
		t.Errorf("restored content differs")
	}
}
