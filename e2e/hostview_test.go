package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testfs"
)

// hostViewScript runs as PID 1 of a new PID and mount namespace (the
// "host"). It mounts a tmpfs at $SRV, starts the daemon in a mount
// namespace of its own where $SRV is a read-only copy — what systemd's
// ProtectSystem=strict gives the unit — then two holders in the host's
// namespace delete their files: one with a second hard link (link must
// work: same vfsmount through /proc/1/root), one with none (copy). It
// prints the daemon's log and one "RESULT" line per rescued file:
// inode, sha256, rescued path.
const hostViewScript = `
set -eu
mount -t tmpfs -o size=32m,mode=0755 tmpfs "$SRV"
mkdir "$SRV/data"
head -c 200000 /dev/urandom > "$SRV/data/a.log"
ln "$SRV/data/a.log" "$SRV/data/a.keep"
head -c 300000 /dev/urandom > "$SRV/data/b.log"
echo "KEEP $(stat -c %i "$SRV/data/a.keep")"
echo "SUM a $(sha256sum < "$SRV/data/a.log" | cut -d' ' -f1)"
echo "SUM b $(sha256sum < "$SRV/data/b.log" | cut -d' ' -f1)"
unshare --mount --propagation private sh -c 'mount -o remount,bind,ro "$SRV" && exec "$BIN" run --config "$CFG"' 2> "$OUT/daemon.log" &
daemon=$!
for i in $(seq 200); do grep -q '"relinkd started"' "$OUT/daemon.log" 2>/dev/null && break; sleep 0.05; done
# Prove the sandbox: the daemon's own view of $SRV is read-only.
grep -q " $SRV .* ro[, ]" /proc/$daemon/mountinfo || grep -q " $SRV ro," /proc/$daemon/mountinfo || { echo "daemon's view of $SRV is not read-only"; grep " $SRV " /proc/$daemon/mountinfo; }
# A filesystem mounted after start-up, in the host's namespace only: the
# daemon's own view never shows it.
mkdir -p "$SRV/late"
mount -t tmpfs -o size=8m,mode=0755 tmpfs "$SRV/late"
head -c 100000 /dev/urandom > "$SRV/late/c.log"
echo "SUM c $(sha256sum < "$SRV/late/c.log" | cut -d' ' -f1)"
for f in data/a data/b late/c; do
  python3 -c 'import os,sys,time
f = open(sys.argv[1], "rb"); os.unlink(sys.argv[1]); time.sleep(30)' "$SRV/$f.log" &
done
for i in $(seq 300); do [ "$(grep -c '"file rescued"' "$OUT/daemon.log")" -ge 3 ] && break; sleep 0.05; done
grep '"file rescued"' "$OUT/daemon.log" | jq -r .rescued_to | while read -r p; do
  echo "RESULT $(stat -c %i "$p") $(sha256sum < "$p" | cut -d' ' -f1) $p"
done
kill -TERM $daemon; wait $daemon || true
cat "$OUT/daemon.log" | sed 's/^/LOG /'
`

// srvConfig is the configuration of the sandboxed-host scenarios: a rule
// on srv, per-filesystem rescue roots, sweeps every 2 s.
func srvConfig(t *testing.T, srv string) string {
	return writeConfig(t, `
scan: {interval: 2s, events: true}
watch:
  - name: srv
    paths: ["`+srv+`/**"]
rescue:
  dirs: []
  fs_dir: .relinkd
  follow: false
  per_user: {max_files: 0, max_bytes: 0}
log: {level: debug}
`)
}

// runHostScenario runs script as PID 1 of a new PID and mount namespace
// (the "host" of a sandboxed daemon, see hostViewScript) with SRV, BIN,
// CFG and OUT set, and returns what it printed.
func runHostScenario(t *testing.T, dir, srv, script string, limit time.Duration) []byte {
	t.Helper()
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "unshare")
	testfs.RequireTool(t, "jq")
	testfs.RequireTool(t, "python3")
	if err := os.Mkdir(srv, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount", "--mount-proc", "--propagation", "private", "bash", "-c", script)
	cmd.Env = append(os.Environ(), "SRV="+srv, "BIN="+binary, "CFG="+srvConfig(t, srv), "OUT="+dir)
	cmd.WaitDelay = 5 * time.Second
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(limit):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("scenario did not finish in %v:\n%s", limit, out)
	}
	if err != nil {
		t.Fatalf("scenario: %v\n%s", err, out)
	}
	return out
}

// TestHostView: a daemon whose own mount namespace is a read-only copy of
// the host's (as under the unit) still creates its rescue root on the
// host's filesystem, rescues by link a deleted name with another link
// (the same inode) and by copy one without, all intact, with no manual
// step; also on a filesystem the host mounted after the daemon started,
// which the daemon's own view never shows. Without the host view the root cannot be created (EROFS) and link
// fails across the two vfsmounts (EXDEV).
func TestHostView(t *testing.T) {
	dir := t.TempDir()
	srv := filepath.Join(dir, "srv")
	out := runHostScenario(t, dir, srv, hostViewScript, 60*time.Second)
	var keep string
	sums := map[string]string{}
	var results [][]string
	var events []Event
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "KEEP "):
			keep = f[1]
		case strings.HasPrefix(line, "SUM "):
			sums[f[1]] = f[2]
		case strings.HasPrefix(line, "RESULT "):
			results = append(results, f[1:])
		case strings.HasPrefix(line, "LOG "):
			var ev Event
			if json.Unmarshal([]byte(line[4:]), &ev) == nil {
				events = append(events, ev)
			}
		case strings.Contains(line, "not read-only"):
			t.Fatalf("the sandbox stand-in did not work: %s", line)
		}
	}
	for _, ev := range events {
		if ev["msg"] == "relinkd started" && ev["host_root"] == "/" {
			t.Errorf("daemon did not find the host's namespace: %v", ev)
		}
		if ev["level"] == "error" {
			t.Errorf("error event: %v", ev)
		}
	}
	rescued := map[string]Event{}
	for _, ev := range events {
		if ev["msg"] == "file rescued" {
			rescued[filepath.Base(ev.str("path"))] = ev
		}
	}
	if len(rescued) != 3 || len(results) != 3 {
		t.Fatalf("want 3 rescues, got %d events, %d results:\n%s", len(rescued), len(results), out)
	}
	byPath := map[string][]string{}
	for _, r := range results {
		byPath[r[2]] = r
	}
	for name, wantMethod := range map[string]string{"a.log": "link", "b.log": "copy", "c.log": "copy"} {
		ev := rescued[name]
		if ev == nil {
			t.Fatalf("%s not rescued:\n%s", name, out)
		}
		if ev["method"] != wantMethod {
			t.Errorf("%s: method %v, want %s", name, ev["method"], wantMethod)
		}
		to, root := ev.str("rescued_to"), srv+"/.relinkd/"
		if name == "c.log" {
			root = srv + "/late/.relinkd/"
		}
		if !strings.HasPrefix(to, root) {
			t.Errorf("%s rescued to %s, want under %s (a host path)", name, to, root)
		}
		r := byPath[to]
		if r == nil {
			t.Fatalf("no result line for %s", to)
		}
		if r[1] != sums[name[:1]] {
			t.Errorf("%s: sha256 %s, want %s", name, r[1], sums[name[:1]])
		}
		if name == "a.log" && r[0] != keep {
			t.Errorf("link rescue of a.log is inode %s, want %s (the inode a.keep names)", r[0], keep)
		}
	}
}
