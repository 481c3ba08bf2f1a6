package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testcontainer"
	"github.com/relinkd/relinkd/internal/testproc"
)

// TestContainer: the real daemon, with sweeps a second apart, finds a file
// that a process in a container (own mount and PID namespaces, an overlay
// root on a loop ext4, a cgroup named docker-<64 hex>.scope) deleted in
// its own view, /var/log/app/x.log, matches it by the rule written in
// that view and rescues it outside the container, into container_dir
// under the container's id, sha256 equal, and follows it until the holder
// closes it; the events, the sidecar, a report's event and
// `relinkd scan --json` name the container.
func TestContainer(t *testing.T) {
	ct := testcontainer.New(t, testcontainer.Options{Cgroup: testcontainer.Docker})
	dir := t.TempDir()
	containers := filepath.Join(dir, "containers")
	cfg := writeConfig(t, `
scan: {interval: 1s, events: true}
watch:
  - name: app
    paths: ["/var/log/app/**"]
  - name: seen
    paths: ["/var/log/seen/**"]
    action: report
rescue:
  dirs: ["`+filepath.Join(dir, "rescued")+`"]
  container_dir: "`+containers+`"
  min_free: 0
  follow: true
`)
	d := startDaemon(t, cfg)
	for _, p := range []string{"/var/log/app", "/var/log/seen"} {
		if err := os.MkdirAll(ct.Path(p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Written through the host's view of the overlay, as a runtime's
	// copy would be; too large for a holder's script.
	data := content("container", 300000)
	if err := os.WriteFile(ct.Path("/var/log/app/x.log"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	h := ct.Start(t,
		testproc.Open("/var/log/app/x.log", "a"), testproc.Unlink("/var/log/app/x.log"),
		testproc.Open("/var/log/seen/y.log", "w"), testproc.Unlink("/var/log/seen/y.log"))
	l, err := os.Readlink("/proc/" + strconv.Itoa(h.PID) + "/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	mntns := strings.TrimSuffix(strings.TrimPrefix(l, "mnt:["), "]")
	named := func(what string, m map[string]any) {
		t.Helper()
		ns, _ := m["mntns"].(float64)
		if strconv.FormatUint(uint64(ns), 10) != mntns || m["container_id"] != ct.ID {
			t.Errorf("%s: mntns %v container_id %v, want %s %s", what, m["mntns"], m["container_id"], mntns, ct.ID)
		}
	}

	ev := d.Wait("file rescued", 10*time.Second, Rescued("/var/log/app/x.log"))
	named("file rescued", ev)
	to := ev.str("rescued_to")
	if want := filepath.Join(containers, ct.ID, "var/log/app/x.log."); !strings.HasPrefix(to, want) || sha(t, to) != shaBytes(data) {
		t.Errorf("rescued to %s, want %s…, sha256 equal", to, want)
	}
	// The holder writes on, then closes: the follow ends.
	h.Do(t, testproc.Write(0, "tail\n"), testproc.Close(0))
	fin := d.Wait("follow finished", 10*time.Second, func(e Event) bool {
		return e.Msg() == "follow finished" && e.str("path") == "/var/log/app/x.log"
	})
	named("follow finished", fin)
	if whole := append(data, "tail\n"...); fin.num("bytes") != int64(len(whole)) || sha(t, to) != shaBytes(whole) {
		t.Errorf("followed to %d bytes, want %d, sha256 equal", fin.num("bytes"), len(whole))
	}
	var side map[string]any
	if b, err := os.ReadFile(to + ".relinkd.json"); err != nil || json.Unmarshal(b, &side) != nil {
		t.Fatalf("sidecar: %v", err)
	}
	named("sidecar", side)
	named("deleted file open", d.Wait("report", 10*time.Second, func(e Event) bool {
		return e.Msg() == "deleted file open" && e.str("path") == "/var/log/seen/y.log"
	}))
	if files := regularFiles(t, filepath.Join(ct.Upper, "var/log")); len(files) != 0 {
		t.Errorf("written into the container's writable layer: %v", files)
	}

	out, err := exec.Command(binary, "scan", "--config", cfg, "--json", "--all").Output()
	if err != nil {
		t.Fatalf("scan: %v", err)
	}
	found := false
	for sc := bufio.NewScanner(bytes.NewReader(out)); sc.Scan(); {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["path"] == "/var/log/seen/y.log" {
			named("scan --json", rec)
			found = true
		}
	}
	if !found {
		t.Errorf("scan --json lists no /var/log/seen/y.log:\n%s", out)
	}
}
