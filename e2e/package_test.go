package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/nspawn"
	"github.com/relinkd/relinkd/internal/testfs"
)

// upgradeVersion is the newer package TestPackage upgrades to.
const upgradeVersion = "1.0.1"

// TestPackage installs the Debian package (make deb) into the systemd
// container of TestSystemd, as an operator would: dpkg -i starts and
// enables the service with no other step, and it rescues a deleted file;
// an upgrade to a newer package keeps an edited conffile and restarts the
// service on it; a policy-rc.d that forbids actions is honoured; apt-get
// remove stops the service and keeps the configuration; purge removes
// /etc/relinkd and leaves the rescued files, saying where they are.
func TestPackage(t *testing.T) {
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "mmdebstrap", "systemd-nspawn", "nsenter", "tar", "make", "dpkg-deb")
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	mirror, err := nspawn.AptMirror("/etc/apt", "bookworm")
	if err != nil {
		testfs.Skip(t, err.Error())
	}
	tmp := t.TempDir()
	root := filepath.Join(tmp, "rootfs")
	rootfsDone := make(chan error, 1)
	go func() {
		tarball, _, err := containerRootfs(mirror).Tarball(ctx, rootfsCache)
		if err == nil {
			err = nspawn.Extract(ctx, tarball, root)
		}
		rootfsDone <- err
	}()
	// The packages build (CPU) while the root filesystem unpacks (disk).
	old, upgrade := buildRelease(t, releaseVersion), buildRelease(t, upgradeVersion)
	if err := <-rootfsDone; err != nil {
		t.Fatal(err)
	}
	debs := map[string]string{} // version -> path in the container
	for v, r := range map[string]release{releaseVersion: old, upgradeVersion: upgrade} {
		b, err := os.ReadFile(r.deb)
		if err != nil {
			t.Fatal(err)
		}
		in := "/root/" + filepath.Base(r.deb)
		if err := os.WriteFile(filepath.Join(root, in), b, 0o644); err != nil {
			t.Fatal(err)
		}
		debs[v] = in
	}

	c := bootMachine(ctx, t, root, began)
	j, err := c.FollowJournal("--unit=" + unit)
	if err != nil {
		t.Fatal(err)
	}
	s := &systemdRun{c: c, j: j, root: root}
	p := &packageRun{systemdRun: s, debs: debs}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("journal of %s (%d entries):\n%s", unit, j.Len(), s.dump(0))
		}
		j.Close()
	})

	if !t.Run("Install", p.install) {
		return
	}
	t.Run("Rescue", p.rescue)
	if !t.Run("Upgrade", p.upgrade) {
		return
	}
	t.Run("PolicyRcD", p.policyRcD)
	if !t.Run("Remove", p.remove) {
		return
	}
	t.Run("Purge", p.purge)
	t.Logf("TestPackage took %v", time.Since(began).Round(time.Millisecond))
}

// packageRun is the state TestPackage's steps share.
type packageRun struct {
	*systemdRun
	debs map[string]string // version -> the package's path in the container

	rescuedTo, rescuedSum string // the file Rescue rescued
}

// dpkg runs dpkg -i on the package of version and returns its output.
func (p *packageRun) dpkgInstall(t *testing.T, version string) string {
	t.Helper()
	return p.run(t, "sh", "-c", "DEBIAN_FRONTEND=noninteractive dpkg -i \"$1\" 2>&1", "sh", p.debs[version])
}

// started waits for the daemon's start-up event from journal index from
// on, of the given version, and checks it came from the unit's main pid.
func (p *packageRun) started(t *testing.T, from int, version string) Event {
	t.Helper()
	ev := p.waitEvent(t, "relinkd started (version "+version+")", from, 15*time.Second, Msg("relinkd started"))
	prop := p.show(t, "ActiveState", "MainPID")
	if ev.str("version") != version || ev.str("config") != "/etc/relinkd/relinkd.yaml" ||
		strconv.FormatInt(ev.num("pid"), 10) != prop["MainPID"] || prop["ActiveState"] != "active" {
		t.Errorf("relinkd started: %s; unit %v; want version %s, config /etc/relinkd/relinkd.yaml, pid = MainPID, active",
			eventJSON(ev), prop, version)
	}
	return ev
}

// 1. dpkg -i: the package's postinst reloads systemd, enables the unit
// and starts it; the binary and unit are where the package puts them.
func (p *packageRun) install(t *testing.T) {
	from := p.j.Len()
	out := p.dpkgInstall(t, releaseVersion)
	t.Logf("dpkg -i:\n%s", out)
	prop := p.waitShow(t, "the service to be active", 15*time.Second, func(m map[string]string) bool {
		return m["ActiveState"] == "active"
	}, "ActiveState", "SubState", "UnitFileState", "FragmentPath", "ExecStart")
	if prop["UnitFileState"] != "enabled" || prop["FragmentPath"] != "/lib/systemd/system/relinkd.service" ||
		!strings.Contains(prop["ExecStart"], "path=/usr/bin/relinkd ") {
		t.Errorf("after dpkg -i: %v, want enabled, /lib/systemd/system/relinkd.service, ExecStart /usr/bin/relinkd", prop)
	}
	p.started(t, from, releaseVersion)
	if got := p.run(t, "dpkg-query", "-W", "-f", "${Conffiles}", "relinkd"); !strings.Contains(got, "/etc/relinkd/relinkd.yaml ") {
		t.Errorf("conffiles %q, want /etc/relinkd/relinkd.yaml", got)
	}
}

// 2. With the packaged default configuration, a log deleted while a
// process holds it is rescued into /var/lib/relinkd/rescued.
func (p *packageRun) rescue(t *testing.T) {
	const path = "/var/log/relinkd-package-test.log"
	from := p.j.Len()
	sum := p.holdDeleted(t, path, 200_000)
	ev := p.outcome(t, path, from, time.Now())
	p.checkSum(t, ev, sum)
	if !strings.HasPrefix(ev.str("rescued_to"), "/var/lib/relinkd/rescued/") {
		t.Errorf("rescued to %s, want under /var/lib/relinkd/rescued", ev.str("rescued_to"))
	}
	p.rescuedTo, p.rescuedSum = ev.str("rescued_to"), sum
}

// 3. An administrator edits the conffile (a shorter scan.interval); the
// upgrade keeps the edit (dpkg does not even ask: the packaged file did
// not change) and restarts the service, which runs the new version on the
// edited configuration.
func (p *packageRun) upgrade(t *testing.T) {
	p.run(t, "sed", "-i", "s/^  interval: 30s$/  interval: 20s/", "/etc/relinkd/relinkd.yaml")
	edited := p.run(t, "sha256sum", "/etc/relinkd/relinkd.yaml")
	if !strings.Contains(p.run(t, "cat", "/etc/relinkd/relinkd.yaml"), "\n  interval: 20s\n") {
		t.Fatal("the edit of scan.interval did not take: configs/relinkd.yaml changed?")
	}
	before := p.show(t, "MainPID")["MainPID"]
	from := p.j.Len()
	out := p.dpkgInstall(t, upgradeVersion)
	t.Logf("dpkg -i (upgrade):\n%s", out)
	ev := p.started(t, from, upgradeVersion)
	if ev.str("interval") != "20s" {
		t.Errorf("after the upgrade the daemon runs with interval %q, want the edited 20s", ev.str("interval"))
	}
	if after := p.show(t, "MainPID")["MainPID"]; after == before {
		t.Errorf("MainPID %s unchanged: the upgrade did not restart the service", after)
	}
	if got := p.run(t, "sha256sum", "/etc/relinkd/relinkd.yaml"); got != edited {
		t.Errorf("the upgrade changed the edited conffile")
	}
	if v := p.run(t, "dpkg-query", "-W", "-f", "${Version}", "relinkd"); v != upgradeVersion {
		t.Errorf("installed version %q, want %s", v, upgradeVersion)
	}
}

// 4. With a policy-rc.d that forbids every action (what image builds and
// chroots install), reinstalling the package does not restart the
// service: deb-systemd-invoke asks policy-rc.d.
func (p *packageRun) policyRcD(t *testing.T) {
	p.run(t, "sh", "-c", "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d")
	defer p.run(t, "rm", "-f", "/usr/sbin/policy-rc.d")
	before := p.show(t, "MainPID")["MainPID"]
	p.dpkgInstall(t, upgradeVersion)
	if after := p.show(t, "MainPID", "ActiveState"); after["MainPID"] != before || after["ActiveState"] != "active" {
		t.Errorf("with policy-rc.d exit 101 the reinstall changed the service: MainPID %s -> %v", before, after)
	}
}

// 5. apt-get remove stops the service and removes the binary and unit;
// the configuration and the rescued file stay.
func (p *packageRun) remove(t *testing.T) {
	from := p.j.Len()
	p.run(t, "sh", "-c", "DEBIAN_FRONTEND=noninteractive apt-get remove -y relinkd 2>&1")
	p.waitEvent(t, "relinkd stopped", from, 15*time.Second, Msg("relinkd stopped"))
	if prop := p.show(t, "ActiveState", "LoadState"); prop["ActiveState"] != "inactive" {
		t.Errorf("after apt-get remove: %v, want inactive", prop)
	}
	for path, want := range map[string]bool{"/usr/bin/relinkd": false, "/lib/systemd/system/relinkd.service": false,
		"/etc/relinkd/relinkd.yaml": true, p.rescuedTo: true} {
		if path == "" {
			continue
		}
		_, err := os.Lstat(filepath.Join(p.root, path))
		if got := err == nil; got != want {
			t.Errorf("after apt-get remove %s exists: %v, want %v", path, got, want)
		}
	}
}

// 6. apt-get purge removes /etc/relinkd, never the rescued files, and
// says where they are.
func (p *packageRun) purge(t *testing.T) {
	out := p.run(t, "sh", "-c", "DEBIAN_FRONTEND=noninteractive apt-get purge -y relinkd 2>&1")
	if !strings.Contains(out, "rescued files are kept: /var/lib/relinkd") {
		t.Errorf("purge did not say where the rescued files are:\n%s", out)
	}
	if _, err := os.Lstat(filepath.Join(p.root, "etc/relinkd")); !os.IsNotExist(err) {
		t.Errorf("after purge /etc/relinkd: %v, want it gone", err)
	}
	if p.rescuedTo == "" {
		t.Fatal("nothing was rescued (see Rescue)")
	}
	if f := strings.Fields(p.run(t, "sha256sum", "--", p.rescuedTo)); len(f) == 0 || f[0] != p.rescuedSum {
		t.Errorf("after purge the rescued %s: %v, want sha256 %s", p.rescuedTo, f, p.rescuedSum)
	}
	if st := p.run(t, "sh", "-c", "dpkg-query -W -f '${db:Status-Status}' relinkd 2>&1 || true"); strings.Contains(st, "installed") && !strings.Contains(st, "not-installed") {
		t.Errorf("after purge dpkg says %q", st)
	}
}
