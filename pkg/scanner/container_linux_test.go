package scanner

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/internal/testcontainer"
	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/internal/testproc"
)

// mntNSOf reads pid's mount namespace independently of the scanner.
func mntNSOf(t *testing.T, pid int) uint64 {
	t.Helper()
	l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	n, err := procfs.ParseNSLink([]byte(l))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A holder in a container (its own mount and PID namespaces, an overlay
// root, a cgroup named by a runtime) is named by its mount namespace and
// container; a holder that only has a mount namespace of its own (a
// sandboxed service: same root) by its namespace; a host holder by neither.
func TestHolderNamespace(t *testing.T) {
	testfs.RequireRoot(t)
	dir := t.TempDir()
	host := testproc.Start(t, testproc.Open(filepath.Join(dir, "h"), "w"), testproc.Unlink(filepath.Join(dir, "h")))
	sandboxed := testproc.StartWith(t, testproc.Options{Unshare: true},
		testproc.Open(filepath.Join(dir, "s"), "w"), testproc.Unlink(filepath.Join(dir, "s")))
	held := []testproc.Step{
		testproc.Open("/var/log/app.log", "w"), testproc.Write(0, "in the container\n"), testproc.Unlink("/var/log/app.log"),
	}
	docker := testcontainer.New(t, testcontainer.Options{Cgroup: testcontainer.Docker})
	inDocker := docker.Start(t, held...)
	nspawn := testcontainer.New(t, testcontainer.Options{Cgroup: testcontainer.Nspawn, Name: "web-1"})
	inNspawn := nspawn.Start(t, held...)
	bare := testcontainer.New(t, testcontainer.Options{})
	inBare := bare.Start(t, held...)

	_, byFD := sweepPIDs(t, host.PID, sandboxed.PID, inDocker.PID, inNspawn.PID, inBare.PID)
	for _, tc := range []struct {
		name      string
		h         *testproc.Holder
		path      string
		id        string
		ns        bool
		container bool
	}{
		{"host", host, filepath.Join(dir, "h"), "", false, false},
		{"mount namespace only", sandboxed, filepath.Join(dir, "s"), "", true, false},
		{"docker", inDocker, "/var/log/app.log", docker.ID, true, true},
		{"nspawn", inNspawn, "/var/log/app.log", "web-1", true, true},
		{"no cgroup", inBare, "/var/log/app.log", "", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, ok := byFD[[2]int{tc.h.PID, tc.h.FDs[0]}]
			if !ok {
				t.Fatalf("pid %d fd %d not found", tc.h.PID, tc.h.FDs[0])
			}
			var wantNS uint64
			if tc.ns {
				wantNS = mntNSOf(t, tc.h.PID)
			}
			if string(c.Path) != tc.path || c.MntNS != wantNS || c.ContainerID != tc.id || c.InContainer() != tc.container {
				t.Errorf("-want +got:\n-path %s mntns %d container_id %q in container %v\n+path %s mntns %d container_id %q in container %v",
					tc.path, wantNS, tc.id, tc.container, c.Path, c.MntNS, c.ContainerID, c.InContainer())
			}
			// scan --json and the events carry the same fields.
			var rec map[string]any
			b, _ := json.Marshal(c.Record(""))
			if err := json.Unmarshal(b, &rec); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{MessageKey: "msg"})
			zap.New(zapcore.NewCore(enc, zapcore.AddSync(&buf), zap.InfoLevel)).Info("x", c.ContainerField())
			var ev map[string]any
			if err := json.Unmarshal(buf.Bytes(), &ev); err != nil {
				t.Fatal(err)
			}
			for _, m := range []map[string]any{rec, ev} {
				ns, hasNS := m["mntns"].(float64)
				id, hasID := m["container_id"].(string)
				if hasNS != tc.ns || uint64(ns) != wantNS || hasID != (tc.id != "") || id != tc.id {
					t.Errorf("fields mntns %v container_id %v, want mntns %d container_id %q (absent when empty)", m["mntns"], m["container_id"], wantNS, tc.id)
				}
			}
		})
	}
}
