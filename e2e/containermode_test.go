package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
)

// envContainer makes the test binary a container's init (containerInit):
// its value is the containerSpec, in JSON.
const envContainer = "RELINKD_E2E_CONTAINER"

// containerSpec is a container made as a runtime makes one from the
// DaemonSet's pod: its own root, hostPath volumes bound in, a ConfigMap's
// files, procfs of the PID namespace it shares (hostPID), capabilities.
type containerSpec struct {
	Root         string          // an empty directory: the container's root (a tmpfs is mounted there)
	Binds        []containerBind // in order
	Files        []containerFile // files put in the root (the image, ConfigMap files)
	ReadOnlyRoot bool            // readOnlyRootFilesystem
	NoNewPrivs   bool            // allowPrivilegeEscalation: false
	Caps         []int           // the capability bounding set (capabilities: drop ALL, add …)
	Command      []string        // command and args
}

type containerBind struct {
	Src, Dst string
	ReadOnly bool
}

type containerFile struct {
	Src, Dst string // Src on the node, Dst in the container
	Mode     os.FileMode
}

// capNumbers maps the capability names of a pod spec to their numbers.
var capNumbers = map[string]int{
	"CHOWN": unix.CAP_CHOWN, "DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH,
	"FOWNER": unix.CAP_FOWNER, "SYS_PTRACE": unix.CAP_SYS_PTRACE, "LEASE": unix.CAP_LEASE,
	"SYS_ADMIN": unix.CAP_SYS_ADMIN, "KILL": unix.CAP_KILL, "SETUID": unix.CAP_SETUID, "SETGID": unix.CAP_SETGID,
	"FSETID": unix.CAP_FSETID, "NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "BPF": unix.CAP_BPF, "PERFMON": unix.CAP_PERFMON,
}

// containerInit runs in a process started in new mount and network
// namespaces (unshare --mount --net --propagation slave): it builds the
// container of spec as runc does (tmpfs root, recursive binds made
// read-only where asked, mounts slave to the host's, procfs, loopback up,
// pivot_root, the old root detached, the bounding set cut down,
// no_new_privs) and executes the command. It never returns.
func containerInit(specJSON string) {
	runtime.LockOSThread()
	fail := func(what string, err error) {
		fmt.Fprintf(os.Stderr, "container init: %s: %v\n", what, err)
		os.Exit(125)
	}
	var s containerSpec
	if err := json.Unmarshal([]byte(specJSON), &s); err != nil {
		fail("spec", err)
	}
	if err := unix.Mount("tmpfs", s.Root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		fail("root tmpfs", err)
	}
	for _, b := range s.Binds {
		dst := filepath.Join(s.Root, b.Dst)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			fail("mkdir "+dst, err)
		}
		if err := unix.Mount(b.Src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			fail("bind "+b.Src, err)
		}
		if b.ReadOnly {
			// Only the bind mount itself, as runc does for readOnly
			// volumes: submounts keep their own flags.
			if err := remountReadOnly(dst); err != nil {
				fail("read-only "+dst, err)
			}
		}
		if err := unix.Mount("", dst, "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
			fail("rslave "+dst, err)
		}
	}
	for _, f := range s.Files {
		dst := filepath.Join(s.Root, f.Dst)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			fail("mkdir", err)
		}
		data, err := os.ReadFile(f.Src)
		if err != nil {
			fail("read "+f.Src, err)
		}
		if err := os.WriteFile(dst, data, f.Mode); err != nil {
			fail("write "+dst, err)
		}
	}
	proc := filepath.Join(s.Root, "proc")
	if err := os.MkdirAll(proc, 0o555); err != nil {
		fail("mkdir proc", err)
	}
	if err := unix.Mount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		fail("mount proc", err)
	}
	if err := loopbackUp(); err != nil {
		fail("lo up", err)
	}
	old := filepath.Join(s.Root, ".oldroot")
	if err := os.Mkdir(old, 0o700); err != nil {
		fail("mkdir oldroot", err)
	}
	if s.ReadOnlyRoot {
		// The root tmpfs is not a bind mount: make the mount read-only.
		if err := unix.Mount("", s.Root, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
			fail("read-only root", err)
		}
	}
	if err := unix.Chdir(s.Root); err != nil {
		fail("chdir", err)
	}
	if err := unix.PivotRoot(".", ".oldroot"); err != nil {
		fail("pivot_root", err)
	}
	if err := unix.Chdir("/"); err != nil {
		fail("chdir /", err)
	}
	if err := unix.Unmount("/.oldroot", unix.MNT_DETACH); err != nil {
		fail("detach old root", err)
	}
	keep := map[int]bool{}
	for _, c := range s.Caps {
		keep[c] = true
	}
	for c := 0; c <= unix.CAP_LAST_CAP; c++ {
		if !keep[c] {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
				fail("drop capability "+strconv.Itoa(c), err)
			}
		}
	}
	if s.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			fail("no_new_privs", err)
		}
	}
	env := []string{"PATH=/usr/bin:/bin"}
	if err := unix.Exec(s.Command[0], s.Command, env); err != nil {
		fail("exec "+s.Command[0], err)
	}
}

// remountReadOnly makes the bind mount at dir read-only, keeping the
// flags it has (a bind remount that drops nosuid or nodev is refused).
func remountReadOnly(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return err
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY)
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	return unix.Mount("", dir, "", flags, "")
}

// loopbackUp brings lo up in the container's network namespace, as a
// runtime's network setup does: the metrics endpoint listens there.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// containerModeScript runs as PID 1 of a new PID and mount namespace: the
// node. Its /var/log and /var/lib are one filesystem ($FS, btrfs), bound
// over them in the node's namespace only. A host process writes a log
// and holds it; the daemon starts in the container ($SPEC: the
// DaemonSet's pod) in the node's PID namespace; once its first full sweep
// is done (its metrics, asked on the liveness probe's port inside the
// pod's network namespace, say so) the host process deletes its log and
// keeps it open. The script prints the daemon's log (LOG lines), the
// metrics after the rescue (METRIC lines), the daemon's capabilities and
// mount namespace, and RESULT lines: sha256 of what was written, sha256
// of what was rescued, read on the node at the event's rescued_to.
const containerModeScript = `
set -eu
mkdir -p "$FS/var-log/app" "$FS/var-lib"
mount --bind "$FS/var-log" /var/log
mount --bind "$FS/var-lib" /var/lib
# The kubelet creates a DirectoryOrCreate hostPath before the pod starts.
mkdir -p /var/lib/relinkd
metrics() { nsenter --net=/proc/$daemon/ns/net python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:'"$PORT$PROBE"'", timeout=5).read().decode())'; }
mkfifo "$OUT/go"
( exec 3>/var/log/app/app.log
  head -c 300000 /dev/urandom >&3
  echo "WROTE $(sha256sum < /var/log/app/app.log | cut -d' ' -f1)"
  read -r _ < "$OUT/go"
  rm /var/log/app/app.log
  exec sleep 60 ) &
holder=$!
RELINKD_E2E_CONTAINER="$SPEC" unshare --mount --net --propagation slave "$HELPER" 2> "$OUT/daemon.log" &
daemon=$!
for i in $(seq 300); do
  metrics 2>/dev/null | grep -q '^relinkd_sweeps_total{kind="full"} [1-9]' && break
  kill -0 $daemon 2>/dev/null || break
  sleep 0.1
done
echo "CAPS $(grep CapEff /proc/$daemon/status | cut -f2) NNP $(grep NoNewPrivs /proc/$daemon/status | cut -f2)"
echo "MNTNS $(readlink /proc/$daemon/ns/mnt) $(readlink /proc/1/ns/mnt)"
echo go > "$OUT/go"
deleted=$(date +%s%N)
for i in $(seq 200); do grep -q '"file rescued"' "$OUT/daemon.log" && break; sleep 0.1; done
echo "AFTER_MS $(( ($(date +%s%N) - deleted) / 1000000 ))"
metrics | grep '^relinkd_' | sed 's/^/METRIC /' || echo "METRICS FAILED"
grep '"file rescued"' "$OUT/daemon.log" | jq -r .rescued_to | while read -r p; do
  echo "RESULT $(sha256sum < "$p" | cut -d' ' -f1) $(stat -c '%U %a' "$p") $p"
done
# The other commands, in the container (its mount namespace and root).
incontainer() { nsenter -t $daemon -m -r -w "$@"; }
incontainer /usr/bin/relinkd list --config /etc/relinkd/relinkd.yaml --host-root /host --json | sed 's/^/LISTJ /' || echo "LIST FAILED"
incontainer /usr/bin/relinkd scan --config /etc/relinkd/relinkd.yaml --host-root /host --json | sed 's/^/SCANJ /' || echo "SCAN FAILED"
incontainer /usr/bin/relinkd doctor --config /etc/relinkd/relinkd.yaml --host-root /host | sed 's/^/DOCTOR /' || true
kill -TERM $daemon; wait $daemon || true
kill $holder 2>/dev/null || true
sed 's/^/LOG /' "$OUT/daemon.log"
`

// TestContainerMode runs the release binary as the DaemonSet runs it (its
// command and arguments, hostPath mounts, ConfigMap, capabilities,
// read-only root, hostPID) in a container made here, on a node of its own
// (a PID and mount namespace whose /var/log and /var/lib are a btrfs):
// a file that a host process deleted is rescued by the event path (well
// within the 30 s sweep interval) into the rescue root on the host's
// filesystem, by reflink (across the container's copy of the mount: allowed
// since Linux 5.18), intact and owned by its owner; the events name the
// host's paths, never /host/…; the liveness probe's endpoint answers.
func TestContainerMode(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "unshare", "nsenter", "python3", "jq", "mkfifo")
	ds, c := relinkdContainer(t)
	rel := buildRelease(t, releaseVersion)
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "configmap-relinkd.yaml")
	if err := os.WriteFile(cfgFile, []byte(configMapConfig(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	fs := testfs.Mount(t, "btrfs", 120)

	// The pod, as a runtime would make it from daemonset.yaml.
	spec := containerSpec{
		Root:         filepath.Join(dir, "root"),
		ReadOnlyRoot: c.SecurityContext.ReadOnlyRootFilesystem,
		NoNewPrivs:   c.SecurityContext.AllowPrivilegeEscalation != nil && !*c.SecurityContext.AllowPrivilegeEscalation,
		Command:      append(slices.Clone(c.Command), c.Args...),
		// The image (Containerfile): the binary at its ENTRYPOINT.
		Files: []containerFile{{Src: rel.bin, Dst: containerfileEntrypoint(t)[0], Mode: 0o755}},
	}
	if err := os.Mkdir(spec.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, m := range c.VolumeMounts {
		v := ds.volume(t, m.Name)
		switch {
		case v.HostPath != nil:
			spec.Binds = append(spec.Binds, containerBind{Src: v.HostPath.Path, Dst: m.MountPath, ReadOnly: m.ReadOnly})
		case v.ConfigMap != nil:
			spec.Files = append(spec.Files, containerFile{Src: cfgFile, Dst: filepath.Join(m.MountPath, "relinkd.yaml"), Mode: 0o644})
		default:
			t.Fatalf("volume %s: neither hostPath nor configMap", m.Name)
		}
	}
	var wantCaps uint64
	for _, name := range c.SecurityContext.Capabilities.Add {
		n, ok := capNumbers[name]
		if !ok {
			t.Fatalf("capability %s: not known to the test", name)
		}
		spec.Caps = append(spec.Caps, n)
		wantCaps |= 1 << n
	}
	specJSON, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Metrics struct{ Listen string }
	}
	decodeYAML(t, configMapConfig(t), &conf)
	port := conf.Metrics.Listen[strings.LastIndex(conf.Metrics.Listen, ":")+1:]

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount", "--mount-proc", "--propagation", "private", "bash", "-c", containerModeScript)
	cmd.Env = append(os.Environ(), "FS="+fs, "SPEC="+string(specJSON), "HELPER="+self, "OUT="+dir,
		"PORT="+port, "PROBE="+c.LivenessProbe.HTTPGet.Path)
	cmd.WaitDelay = 5 * time.Second
	done := make(chan struct{})
	var out []byte
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("scenario did not finish in 90 s:\n%s", out)
	}
	if err != nil {
		t.Fatalf("scenario: %v\n%s", err, out)
	}

	var events, listed, scanned []Event
	var doctor []string
	metrics := map[string]string{}
	var wrote, caps, nnp, afterMS string
	var results [][]string
	var mntns []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "LOG "):
			var ev Event
			if json.Unmarshal([]byte(line[4:]), &ev) == nil {
				events = append(events, ev)
			} else {
				t.Logf("daemon: %s", line[4:])
			}
		case strings.HasPrefix(line, "METRIC ") && len(f) == 3:
			metrics[f[1]] = f[2]
		case strings.HasPrefix(line, "WROTE "):
			wrote = f[1]
		case strings.HasPrefix(line, "CAPS ") && len(f) == 4:
			caps, nnp = f[1], f[3]
		case strings.HasPrefix(line, "MNTNS "):
			mntns = f[1:]
		case strings.HasPrefix(line, "AFTER_MS "):
			afterMS = f[1]
		case strings.HasPrefix(line, "RESULT "):
			results = append(results, f[1:])
		case strings.HasPrefix(line, "LISTJ "), strings.HasPrefix(line, "SCANJ "):
			var ev Event
			if err := json.Unmarshal([]byte(line[6:]), &ev); err != nil {
				t.Errorf("%s: %v", line, err)
			}
			if line[:4] == "LIST" {
				listed = append(listed, ev)
			} else if ev["summary"] == nil && ev.str("comm") != "relinkd" {
				// The daemon's own pins are deleted-open files too.
				scanned = append(scanned, ev)
			}
		case strings.HasPrefix(line, "DOCTOR "):
			doctor = append(doctor, line[7:])
		case strings.HasSuffix(line, " FAILED"):
			t.Errorf("%s", line)
		case strings.HasPrefix(line, "METRICS FAILED"):
			t.Errorf("the liveness probe's endpoint did not answer")
		}
	}
	dump := func() string {
		var b strings.Builder
		for _, ev := range events {
			js, _ := json.Marshal(ev)
			b.Write(js)
			b.WriteByte('\n')
		}
		return b.String()
	}

	// The container is what the DaemonSet asks for.
	if got, err := strconv.ParseUint(caps, 16, 64); err != nil || got != wantCaps {
		t.Errorf("daemon's effective capabilities %s, want %x (the DaemonSet's)", caps, wantCaps)
	}
	if spec.NoNewPrivs && nnp != "1" {
		t.Errorf("daemon's NoNewPrivs %q, want 1", nnp)
	}
	if len(mntns) != 2 || mntns[0] == mntns[1] {
		t.Errorf("daemon's mount namespace %v is the node's: not a container", mntns)
	}

	var started, rescued Event
	for _, ev := range events {
		switch ev.Msg() {
		case "relinkd started":
			started = ev
		case "file rescued":
			rescued = ev
		}
		if ev["level"] == "error" {
			t.Errorf("error event: %v", ev)
		}
		for _, k := range []string{"path", "rescued_to", "dir", "root"} {
			if strings.HasPrefix(ev.str(k), "/host/") {
				t.Errorf("event names the container's path (%s=%s): %v", k, ev.str(k), ev)
			}
		}
	}
	if started == nil || started.str("host_root") != "/host" {
		t.Errorf("relinkd started: %v, want host_root /host", started)
	}
	if rescued == nil {
		t.Fatalf("not rescued (%s ms after the unlink); the daemon's events:\n%s\noutput:\n%s", afterMS, dump(), out)
	}
	t.Logf("rescued %s ms after the unlink: %v", afterMS, rescued)
	if ms, _ := strconv.Atoi(afterMS); ms > 20000 {
		t.Errorf("rescued %d ms after the unlink: by the 30 s sweep, not the event path", ms)
	}
	if rescued.str("path") != "/var/log/app/app.log" {
		t.Errorf("file rescued path %q, want the host's /var/log/app/app.log", rescued.str("path"))
	}
	if to := rescued.str("rescued_to"); !strings.HasPrefix(to, "/var/lib/relinkd/rescued/") {
		t.Errorf("rescued_to %q, want under the host's /var/lib/relinkd/rescued", to)
	}
	if rescued.str("method") != "reflink" {
		t.Errorf("method %q, want reflink (btrfs, across the container's copy of the mount)", rescued.str("method"))
	}
	if len(results) != 1 || results[0][0] != wrote || results[0][3] != rescued.str("rescued_to") {
		t.Errorf("rescued file on the node: %v, want sha256 %s at %s", results, wrote, rescued.str("rescued_to"))
	} else if results[0][1] != "root" {
		t.Errorf("rescued file owned by %s, want root (the holder's)", results[0][1])
	}
	if metrics[`relinkd_rescues_total{method="reflink"}`] != "1" {
		t.Errorf("metrics after the rescue: relinkd_rescues_total{method=\"reflink\"} = %q, want 1", metrics[`relinkd_rescues_total{method="reflink"}`])
	}
	// The rescued file is on the node, not in the container's root.
	if _, err := os.Stat(filepath.Join(fs, "var-lib", strings.TrimPrefix(rescued.str("rescued_to"), "/var/lib/"))); err != nil {
		t.Errorf("rescued file not on the node's filesystem: %v", err)
	}

	// list, scan and doctor in the container name the host's paths too.
	if len(listed) != 1 || listed[0].str("path") != "/var/log/app/app.log" || listed[0].str("rescued_to") != rescued.str("rescued_to") {
		t.Errorf("relinkd list --host-root /host: %v, want the rescued file (path /var/log/app/app.log, rescued_to %s)", listed, rescued.str("rescued_to"))
	}
	if len(scanned) != 1 || scanned[0].str("path") != "/var/log/app/app.log" || scanned[0].str("rule") != "logs" {
		t.Errorf("relinkd scan --host-root /host: %v, want the held file /var/log/app/app.log, rule logs", scanned)
	}
	if len(doctor) < 2 || !strings.HasPrefix(doctor[1], "host paths:    /host (--host-root") || !strings.Contains(strings.Join(doctor, "\n"), "O_TMPFILE   yes") {
		t.Errorf("relinkd doctor --host-root /host:\n%s", strings.Join(doctor, "\n"))
	}
	if t.Failed() {
		t.Logf("the daemon's events:\n%s\ndoctor:\n%s", dump(), strings.Join(doctor, "\n"))
	}
}

func decodeYAML(t *testing.T, text string, v any) {
	t.Helper()
	if err := yaml.Unmarshal([]byte(text), v); err != nil {
		t.Fatal(err)
	}
}

// TestHostRootRefused: container mode refuses to start where the proc
// root does not list the host's processes by relinkd's own pids (a PID
// namespace of its own, without hostPID) or where its PID 1 is in
// relinkd's own mount namespace (not in a container at all), saying why.
func TestHostRootRefused(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "unshare")
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		cmd  []string
		want string
	}{
		{"own PID namespace", []string{"unshare", "--pid", "--fork", binary, "scan", "--host-root", dir},
			"are not in relinkd's PID namespace"},
		// relinkd is PID 1 of a PID namespace with its own /proc, in
		// the mount namespace of its PID 1: itself.
		{"not in a container", []string{"unshare", "--pid", "--fork", "--mount", "--mount-proc", binary, "run", "--host-root", dir},
			"shares relinkd's mount namespace"},
		{"relative", []string{binary, "list", "--host-root", "host"}, "not an absolute path"},
		{"missing", []string{binary, "doctor", "--host-root", filepath.Join(dir, "none")}, "no such file or directory"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := exec.Command(tt.cmd[0], tt.cmd[1:]...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), tt.want) {
				t.Errorf("%v: %v, output %q; want a failure saying %q", tt.cmd, err, out, tt.want)
			}
		})
	}
}
