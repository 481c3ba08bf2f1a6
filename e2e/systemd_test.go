package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/nspawn"
	"github.com/relinkd/relinkd/internal/testfs"
)

// rootfsCache holds the container's root filesystem between runs, outside
// the repository (building it takes about 25 s, unpacking it about 3 s).
const rootfsCache = "/var/cache/relinkd-test"

// containerRootfs is a minimal Debian with systemd as init and dbus
// (systemd-analyze security asks the manager over the bus). The holders
// are sh and coreutils, and the test parses the journal itself, so neither
// python3 nor jq is needed. Documentation, manuals and translations are
// left out: fewer files to unpack on every run.
func containerRootfs(mirror string) nspawn.Rootfs {
	return nspawn.Rootfs{
		Suite:   "bookworm",
		Mirror:  mirror,
		Include: []string{"systemd", "systemd-sysv", "dbus", "procps"},
		PathExclude: []string{
			"/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
		},
	}
}

// unit is the unit's name as installed by make install.
const unit = "relinkd.service"

// TestSystemd installs relinkd into a systemd-nspawn container booted from
// a minimal Debian, exactly as the README's "Install as a service" says
// (make install, systemctl daemon-reload, systemctl enable --now relinkd)
// with no manual step, and checks the shipped unit under a real systemd:
// start on READY=1, rescues with the default rules on the root filesystem
// and on a filesystem mounted at /srv, link where the kernel allows it,
// reload, the watchdog, stop, and systemd-analyze security's rating.
func TestSystemd(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "mmdebstrap", "systemd-nspawn", "nsenter", "tar", "make", "mount", "mkfs.ext4")
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	mirror, err := nspawn.AptMirror("/etc/apt", "bookworm")
	if err != nil {
		testfs.Skip(t, err.Error())
	}

	// The binary builds (CPU) while the root filesystem unpacks (disk).
	tmp := t.TempDir()
	root, bin := filepath.Join(tmp, "rootfs"), filepath.Join(tmp, "relinkd")
	type prepared struct {
		built bool
		took  time.Duration
		err   error
	}
	rootfsDone := make(chan prepared, 1)
	go func() {
		start := time.Now()
		tarball, built, err := containerRootfs(mirror).Tarball(ctx, rootfsCache)
		if err == nil {
			err = nspawn.Extract(ctx, tarball, root)
		}
		rootfsDone <- prepared{built, time.Since(start), err}
	}()
	buildOut, buildErr := makeCmd(ctx, repo, "build", "BIN="+bin).CombinedOutput()
	rfs := <-rootfsDone
	if buildErr != nil {
		t.Fatalf("make build: %v\n%s", buildErr, buildOut)
	}
	if rfs.err != nil {
		t.Fatal(rfs.err)
	}
	t.Logf("root filesystem ready in %v (cache %s, built now: %v); binary built in parallel",
		rfs.took.Round(time.Millisecond), rootfsCache, rfs.built)
	// The README's first step, into the container's root (DESTDIR= works).
	if out, err := makeCmd(ctx, repo, "install", "DESTDIR="+root, "BIN="+bin).CombinedOutput(); err != nil {
		t.Fatalf("make install DESTDIR=%s: %v\n%s", root, err, out)
	}

	// A separate filesystem at /srv, mounted before the container boots
	// (as a data disk from fstab would be): systemd-nspawn binds the root
	// directory with its submounts.
	srv := testfs.Mount(t, "ext4", 64)
	srvInRoot := filepath.Join(root, "srv")
	if out, err := exec.Command("mount", "--bind", srv, srvInRoot).CombinedOutput(); err != nil {
		t.Fatalf("mount --bind %s %s: %v\n%s", srv, srvInRoot, err, out)
	}
	t.Cleanup(func() { testfs.Unmount(t, srvInRoot) })

	// The container may grant what the BPF drop-in asks for; the shipped
	// unit's bounding set still keeps it from the daemon (EnableNow).
	c := bootMachine(ctx, t, root, began, "--capability=CAP_BPF,CAP_PERFMON", "--system-call-filter=bpf")

	j, err := c.FollowJournal("--unit=" + unit)
	if err != nil {
		t.Fatal(err)
	}
	s := &systemdRun{c: c, j: j, root: root}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("journal of %s (%d entries):\n%s", unit, j.Len(), s.dump(0))
		}
		j.Close()
	})

	if !t.Run("EnableNow", s.enableNow) {
		return // nothing else can run without the service
	}
	t.Run("RescueRootFS", s.rescueRootFS)
	t.Run("RescueSrv", s.rescueSrv)
	t.Run("Link", s.link)
	t.Run("Reload", s.reload)
	t.Run("Watchdog", s.watchdog)
	t.Run("Stop", s.stop)
	t.Run("Security", s.security)
	t.Run("BPF", func(t *testing.T) { s.bpf(t, repo) })
	t.Logf("TestSystemd took %v", time.Since(began).Round(time.Millisecond))
}

// makeCmd runs make in the repository. Under `make test` the environment
// carries the outer make's MAKEFLAGS (its command-line variables and
// jobserver descriptors, which this process does not have): they are
// dropped, so the inner make sees only the arguments given here.
func makeCmd(ctx context.Context, repo string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "make", append([]string{"-C", repo}, args...)...)
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES",
			// make deb's settings: the arguments name the release.
			"DEB_VERSION", "DEB_ARCH", "DIST", "ARCH":
		default:
			cmd.Env = append(cmd.Env, kv)
		}
	}
	return cmd
}

// systemdRun is the state the subtests of TestSystemd share: one booted
// container with relinkd installed, and its journal.
type systemdRun struct {
	c    *nspawn.Container
	j    *nspawn.Journal
	root string // the container's root directory on the host

	rescued map[string]string // path -> rescued_to of the files rescued so far (outcome)
	writing map[string]bool   // paths held open for writing (holdDeleted): followed
}

// ctx returns a context for one step, ended with the test.
func (s *systemdRun) ctx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// run runs a command in the container and returns its output.
func (s *systemdRun) run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := s.c.Exec(s.ctx(t, 60*time.Second), name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// show returns properties of the unit (systemctl show -p …).
func (s *systemdRun) show(t *testing.T, props ...string) map[string]string {
	t.Helper()
	args := []string{"show", unit}
	for _, p := range props {
		args = append(args, "-p", p)
	}
	m := map[string]string{}
	for _, line := range strings.Split(s.run(t, "systemctl", args...), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

// waitShow polls the unit's properties until cond holds (systemd has no
// event to wait on that systemctl exposes) and returns them.
func (s *systemdRun) waitShow(t *testing.T, what string, timeout time.Duration, cond func(map[string]string) bool, props ...string) map[string]string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p := s.show(t, props...)
		if cond(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; unit: %v", timeout, what, p)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// event decodes a journal entry that the daemon logged as a JSON event.
// The unit's journal also holds systemd's own lines about the unit and
// anything else the process writes (a Go traceback): those are not events.
func event(e nspawn.Entry) Event {
	if e.FromManager() || e["_SYSTEMD_UNIT"] != unit {
		return nil
	}
	var ev Event
	if json.Unmarshal([]byte(e.Message()), &ev) != nil || ev.Msg() == "" {
		return nil
	}
	return ev
}

// waitEvent waits for a daemon event from journal index from on.
func (s *systemdRun) waitEvent(t *testing.T, what string, from int, timeout time.Duration, match func(Event) bool) Event {
	t.Helper()
	e, _, err := s.j.Wait(s.ctx(t, timeout), from, func(e nspawn.Entry) bool {
		ev := event(e)
		return ev != nil && match(ev)
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v; the daemon's events since:\n%s", what, err, s.dumpEvents(from))
	}
	return event(e)
}

// waitManager waits for a line systemd logged about the unit.
func (s *systemdRun) waitManager(t *testing.T, what string, from int, timeout time.Duration, contains string) {
	t.Helper()
	_, _, err := s.j.Wait(s.ctx(t, timeout), from, func(e nspawn.Entry) bool {
		return e.FromManager() && strings.Contains(e.Message(), contains)
	})
	if err != nil {
		t.Fatalf("waiting for %s (systemd logging %q): %v; journal since:\n%s", what, contains, err, s.dump(from))
	}
}

// dump formats the unit's journal from index from on: systemd's lines
// about the unit and the daemon's JSON events. Anything else the daemon
// wrote (the Go runtime's goroutine dump when the watchdog's SIGABRT
// kills it) is counted, not printed.
func (s *systemdRun) dump(from int) string {
	var b strings.Builder
	other := 0
	flush := func() {
		if other > 0 {
			fmt.Fprintf(&b, "relinkd: (%d lines that are not JSON events left out)\n", other)
			other = 0
		}
	}
	for _, e := range s.j.Entries(from) {
		switch {
		case e.FromManager():
			flush()
			fmt.Fprintf(&b, "systemd: %s\n", e.Message())
		case event(e) != nil:
			flush()
			fmt.Fprintf(&b, "relinkd[%s]: %s\n", e["_PID"], e.Message())
		default:
			other++
		}
	}
	flush()
	return b.String()
}

// dumpEvents formats the daemon's JSON events from index from on.
func (s *systemdRun) dumpEvents(from int) string {
	var b strings.Builder
	for _, e := range s.j.Entries(from) {
		if event(e) != nil {
			b.WriteString(e.Message())
			b.WriteByte('\n')
		}
	}
	if b.Len() == 0 {
		return "(none)\n"
	}
	return b.String()
}

// 1. The README's second step; Type=notify makes enable --now return only
// once the daemon has sent READY=1 (after its first full sweep).
func (s *systemdRun) enableNow(t *testing.T) {
	s.run(t, "systemctl", "daemon-reload")
	s.run(t, "systemctl", "enable", "--now", "relinkd")
	p := s.show(t, "Type", "ActiveState", "SubState", "UnitFileState", "MainPID")
	if p["Type"] != "notify" || p["ActiveState"] != "active" || p["SubState"] != "running" || p["UnitFileState"] != "enabled" {
		t.Fatalf("after systemctl enable --now: %v, want Type=notify ActiveState=active SubState=running UnitFileState=enabled", p)
	}
	// systemd logs "Started" when the start job completes: on READY=1.
	s.waitManager(t, "the start job", 0, 10*time.Second, "Started "+unit)
	ev := s.waitEvent(t, "relinkd started", 0, 10*time.Second, Msg("relinkd started"))
	if ev.str("config") != "/etc/relinkd/relinkd.yaml" || strconv.FormatInt(ev.num("pid"), 10) != p["MainPID"] {
		t.Errorf("relinkd started: %v, want config /etc/relinkd/relinkd.yaml and pid %s (MainPID)", ev, p["MainPID"])
	}
	// The default configuration takes BPF where it loads (scan.backend:
	// auto); the shipped unit grants no BPF, so it sweeps /proc, and says
	// why.
	if ev.str("scan_backend") != "proc" || !strings.Contains(ev.str("scan_backend_reason"), "operation not permitted") {
		t.Errorf("relinkd started: scan_backend %q (%s), want proc (scan.backend auto, BPF not permitted by the unit)",
			ev.str("scan_backend"), ev.str("scan_backend_reason"))
	}
}

// holdScript writes $2 random bytes to $1 through a descriptor it keeps
// open for writing (as a logging process does), prints their sha256,
// deletes the name and leaves a process holding the descriptor: sleep
// inherits it and outlives the script (the container's PID 1 adopts it).
const holdScript = `set -e
exec 3>"$1"
head -c "$2" /dev/urandom >&3
sha256sum <"$1"
rm -- "$1"
sleep 3600 </dev/null >/dev/null 2>&1 &
`

// holdDeleted runs holdScript in the container and returns the sha256 of
// what it wrote.
func (s *systemdRun) holdDeleted(t *testing.T, path string, size int) string {
	t.Helper()
	f := strings.Fields(s.run(t, "sh", "-c", holdScript, "sh", path, strconv.Itoa(size)))
	if len(f) == 0 {
		t.Fatalf("holder of %s printed no sha256", path)
	}
	if s.writing == nil {
		s.writing = make(map[string]bool)
	}
	s.writing[path] = true
	return f[0]
}

// outcome waits for the daemon's decision about path from journal index
// from on (rescued, failed, skipped or only reported; deleted is when the
// holder had deleted it) and fails the test
// with it unless the file was rescued. A failed rescue is retried only a
// scan interval later (30 s): the first outcome is the answer.
func (s *systemdRun) outcome(t *testing.T, path string, from int, deleted time.Time) Event {
	t.Helper()
	decided := map[string]bool{"file rescued": true, "rescue failed": true, "rescue skipped": true, "deleted file open": true}
	// 40 s: the event path answers within milliseconds, the full sweep
	// (the safety net) within the default scan.interval of 30 s.
	ev := s.waitEvent(t, "an outcome for "+path, from, 40*time.Second, func(e Event) bool {
		return decided[e.Msg()] && e.str("path") == path
	})
	t.Logf("%s: %s (%s) %v after the unlink", path, ev.Msg(), ev.str("method"), time.Since(deleted).Round(time.Millisecond))
	if ev.Msg() != "file rescued" {
		t.Fatalf("%s was not rescued: %s: %s\nthe daemon's events since the file was deleted:\n%s",
			path, ev.Msg(), eventJSON(ev), s.dumpEvents(from))
	}
	if s.rescued == nil {
		s.rescued = make(map[string]string)
	}
	s.rescued[path] = ev.str("rescued_to")
	return ev
}

// alreadyRescued checks, after a restart whose journal starts at index
// from, that every file rescued earlier and still held is known to the
// new daemon as rescued ("already rescued", into the same file) and that
// none was rescued again.
func (s *systemdRun) alreadyRescued(t *testing.T, from int, restart string) {
	t.Helper()
	for path, to := range s.rescued {
		ev := s.waitEvent(t, "already rescued for "+path+" after "+restart, from, 15*time.Second, func(e Event) bool {
			return e.Msg() == "already rescued" && e.str("path") == path
		})
		if ev.str("rescued_to") != to {
			t.Errorf("after %s: %s already rescued to %s, want %s", restart, path, ev.str("rescued_to"), to)
		}
		// holdScript's writer still holds its file open for writing:
		// the new daemon takes the follow over.
		if follow := ev["follow"] == true; follow != s.writing[path] {
			t.Errorf("after %s: %s already rescued with follow %v, want %v", restart, path, follow, !follow)
		}
	}
	for _, e := range s.j.Entries(from) {
		if ev := event(e); ev != nil && ev.Msg() == "file rescued" && s.rescued[ev.str("path")] != "" {
			t.Errorf("after %s: rescued again: %s", restart, eventJSON(ev))
		}
	}
}

func eventJSON(ev Event) string {
	b, _ := json.Marshal(ev)
	return string(b)
}

// checkSum fails unless the rescued file inside the container has sum.
func (s *systemdRun) checkSum(t *testing.T, ev Event, sum string) {
	t.Helper()
	to := ev.str("rescued_to")
	if to == "" {
		t.Fatalf("file rescued without rescued_to: %s", eventJSON(ev))
	}
	f := strings.Fields(s.run(t, "sha256sum", "--", to))
	if len(f) == 0 || f[0] != sum {
		t.Errorf("sha256 of %s (rescued from %s by %s) = %v, want %s (the original's)",
			to, ev.str("path"), ev.str("method"), f, sum)
	}
}

// 2. A log on the root filesystem, under the default "logs" rule
// (/var/log/** except the journal): rescued into rescue.dirs
// (/var/lib/relinkd/rescued, the unit's StateDirectory).
func (s *systemdRun) rescueRootFS(t *testing.T) {
	const path = "/var/log/relinkd-systemd-test.log"
	from := s.j.Len()
	sum := s.holdDeleted(t, path, 300_000)
	ev := s.outcome(t, path, from, time.Now())
	if ev.str("rule") != "logs" {
		t.Errorf("rule = %q, want logs (configs/relinkd.yaml)", ev.str("rule"))
	}
	s.checkSum(t, ev, sum)
}

// 3. A file on the ext4 filesystem mounted at /srv, under the default
// "service-data" rule (/srv/**): no rescue.dirs entry is on that
// filesystem, so it goes to rescue.fs_dir at its root (/srv/.relinkd),
// which nobody created beforehand.
func (s *systemdRun) rescueSrv(t *testing.T) {
	const path = "/srv/relinkd-systemd-test.dat"
	from := s.j.Len()
	sum := s.holdDeleted(t, path, 200_000)
	ev := s.outcome(t, path, from, time.Now())
	if ev.str("rule") != "service-data" {
		t.Errorf("rule = %q, want service-data (configs/relinkd.yaml)", ev.str("rule"))
	}
	if to := ev.str("rescued_to"); !strings.HasPrefix(to, "/srv/") {
		t.Errorf("rescued_to = %q, want a place on the /srv filesystem (cross_fs is off)", to)
	}
	s.checkSum(t, ev, sum)
}

// linkScript creates $1, hard-links it as $2, keeps $1 open, deletes $1
// and prints $2's inode number: the deleted name's inode still has a
// link, so linkat(2) may give it its name back.
const linkScript = `set -e
printf 'relinkd link test\n' >"$1"
ln -- "$1" "$2"
exec 3<"$1"
rm -- "$1"
stat -c %i -- "$2"
sleep 3600 </dev/null >/dev/null 2>&1 &
`

// 4. The cheapest method: the rescued name is a new link to the same inode.
func (s *systemdRun) link(t *testing.T) {
	const a, b = "/var/log/relinkd-systemd-link-a.log", "/var/log/relinkd-systemd-link-b.log"
	from := s.j.Len()
	ino := strings.TrimSpace(s.run(t, "sh", "-c", linkScript, "sh", a, b))
	ev := s.outcome(t, a, from, time.Now())
	if ev.str("method") != "link" {
		t.Errorf("method = %q, want link (%s's inode %s still has the link %s): %s",
			ev.str("method"), a, ino, b, eventJSON(ev))
	}
	got := strings.TrimSpace(s.run(t, "stat", "-c", "%i", "--", ev.str("rescued_to")))
	if got != ino {
		t.Errorf("inode of %s = %s, want %s (that of %s)", ev.str("rescued_to"), got, ino, b)
	}
}

// 5. ExecReload sends SIGHUP.
func (s *systemdRun) reload(t *testing.T) {
	from := s.j.Len()
	s.run(t, "systemctl", "reload", "relinkd")
	ev := s.waitEvent(t, "config reloaded", from, 15*time.Second, func(e Event) bool {
		return e.Msg() == "config reloaded" || e.Msg() == "config reload failed"
	})
	if ev.Msg() != "config reloaded" {
		t.Fatalf("systemctl reload: %s", eventJSON(ev))
	}
}

// watchdogDropIn lowers the unit's WatchdogSec=30s for this test only, so
// that waiting for the watchdog takes seconds: the daemon pings at half
// the interval it is given (WATCHDOG_USEC), whatever the interval.
const watchdogDropIn = "# Written by e2e/systemd_test.go: a short watchdog, to keep the test fast.\n[Service]\nWatchdogSec=3s\n"

// 6. A daemon that stops answering (SIGSTOP) is killed and restarted by
// the watchdog (Restart=on-failure).
func (s *systemdRun) watchdog(t *testing.T) {
	dir := filepath.Join(s.root, "etc/systemd/system", unit+".d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "50-e2e-watchdog.conf"), []byte(watchdogDropIn), 0o644); err != nil {
		t.Fatal(err)
	}
	s.run(t, "systemctl", "daemon-reload")
	// The interval reaches the daemon at start (WATCHDOG_USEC).
	restarted := s.j.Len()
	s.run(t, "systemctl", "restart", "relinkd")
	p := s.show(t, "WatchdogUSec", "MainPID", "NRestarts", "ActiveState")
	if p["WatchdogUSec"] != "3s" || p["ActiveState"] != "active" {
		t.Fatalf("after the drop-in and a restart: %v, want WatchdogUSec=3s ActiveState=active", p)
	}
	pid, restarts := p["MainPID"], p["NRestarts"]
	from := s.j.Len()
	s.run(t, "kill", "-STOP", pid)
	s.waitManager(t, "the watchdog", from, 15*time.Second, "Watchdog timeout")
	s.waitManager(t, "the failure", from, 15*time.Second, "Failed with result 'watchdog'")
	s.waitShow(t, "the restart", 20*time.Second, func(p map[string]string) bool {
		return p["NRestarts"] != restarts && p["MainPID"] != pid && p["MainPID"] != "0" &&
			p["ActiveState"] == "active" && p["SubState"] == "running"
	}, "MainPID", "NRestarts", "ActiveState", "SubState", "Result")
	// The files rescued so far are still held (their holders sleep): no
	// restart copies them again, the watchdog's kill included.
	s.alreadyRescued(t, restarted, "systemctl restart")
	s.alreadyRescued(t, from, "the watchdog's kill")
}

// 7. SIGTERM stops the daemon within 5 s, cleanly.
func (s *systemdRun) stop(t *testing.T) {
	from := s.j.Len()
	start := time.Now()
	s.run(t, "systemctl", "stop", "relinkd")
	took := time.Since(start)
	p := s.show(t, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
	if took > 5*time.Second {
		t.Errorf("systemctl stop took %v, want at most 5s", took.Round(time.Millisecond))
	}
	if p["ActiveState"] != "inactive" || p["Result"] != "success" {
		t.Errorf("after systemctl stop: %v, want ActiveState=inactive Result=success", p)
	}
	// journald may not have read the daemon's last lines yet.
	s.waitEvent(t, "relinkd stopped", from, 5*time.Second, Msg("relinkd stopped"))
	t.Logf("systemctl stop took %v", took.Round(time.Millisecond))
}

// 8. The hardening, as systemd itself rates it (informational).
func (s *systemdRun) security(t *testing.T) {
	if out := s.exposure(t); !strings.Contains(out, "✓ CapabilityBoundingSet=~CAP_BPF") {
		t.Errorf("the shipped unit: systemd-analyze does not say that it may not load BPF programs")
	}
}

// exposure logs systemd-analyze security's report and its overall
// exposure line, and returns the report.
func (s *systemdRun) exposure(t *testing.T) string {
	t.Helper()
	out := s.run(t, "systemd-analyze", "security", "--no-pager", unit)
	t.Logf("systemd-analyze security %s:\n%s", unit, out)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "Overall exposure level") {
			t.Log(strings.TrimSpace(line))
			return out
		}
	}
	t.Errorf("systemd-analyze security printed no overall exposure level")
	return out
}

// 9. The BPF drop-in, installed as the README says: the daemon sweeps
// with the BPF backend (in the container's pid namespace), a deleted log
// is rescued, and systemd-analyze rates the unit with the two
// capabilities added.
func (s *systemdRun) bpf(t *testing.T, repo string) {
	dropIn, err := os.ReadFile(filepath.Join(repo, "deploy/systemd/relinkd-bpf.conf"))
	if err != nil {
		t.Fatal(err)
	}
	// The default configuration asks for auto (the start-up step checked
	// that without the drop-in it sweeps /proc); the drop-in only grants
	// what BPF needs.
	s.run(t, "grep", "-q", "^  backend: auto$", "/etc/relinkd/relinkd.yaml")
	s.run(t, "install", "-d", "-m", "0755", "/etc/systemd/system/"+unit+".d")
	if err := os.WriteFile(filepath.Join(s.root, "etc/systemd/system", unit+".d", "bpf.conf"), dropIn, 0o644); err != nil {
		t.Fatal(err)
	}
	s.run(t, "systemctl", "daemon-reload")
	from := s.j.Len()
	s.run(t, "systemctl", "restart", "relinkd")
	ev := s.waitEvent(t, "relinkd started", from, 15*time.Second, Msg("relinkd started"))
	if ev.str("scan_backend") != "bpf" {
		t.Fatalf("with the BPF drop-in: scan_backend %q (%s), want bpf", ev.str("scan_backend"), ev.str("scan_backend_reason"))
	}
	const path = "/var/log/relinkd-systemd-bpf.log"
	from = s.j.Len()
	deleted := time.Now()
	sum := s.holdDeleted(t, path, 1<<20)
	s.checkSum(t, s.outcome(t, path, from, deleted), sum)
	if p := s.show(t, "CapabilityBoundingSet"); !strings.Contains(p["CapabilityBoundingSet"], "cap_bpf") ||
		!strings.Contains(p["CapabilityBoundingSet"], "cap_perfmon") || strings.Contains(p["CapabilityBoundingSet"], "cap_sys_admin") {
		t.Errorf("with the drop-in: CapabilityBoundingSet %q, want the unit's plus cap_bpf cap_perfmon, no cap_sys_admin", p["CapabilityBoundingSet"])
	}
	if out := s.exposure(t); !strings.Contains(out, "✗ CapabilityBoundingSet=~CAP_BPF") {
		t.Errorf("with the drop-in: systemd-analyze does not count CAP_BPF")
	}
	s.run(t, "systemctl", "stop", "relinkd")
}

// bootMachine boots root with systemd as PID 1 (nspawn.Boot with args),
// waits until it has booted, closes it at cleanup, and logs its state and
// the time since began.
func bootMachine(ctx context.Context, t *testing.T, root string, began time.Time, args ...string) *nspawn.Container {
	t.Helper()
	c, err := nspawn.Boot(ctx, root, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	bootCtx, bootCancel := context.WithTimeout(ctx, 60*time.Second)
	state, err := c.WaitBooted(bootCtx)
	bootCancel()
	if err != nil {
		t.Fatal(err)
	}
	if state != "running" {
		failed, _ := c.Exec(ctx, "systemctl", "--failed", "--no-legend")
		t.Logf("container booted %s; failed units:\n%s", state, failed)
	}
	t.Logf("container %s booted (%s) %v into the test", c.Machine, state, time.Since(began).Round(time.Millisecond))
	return c
}
