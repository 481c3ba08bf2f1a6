// Package testlayout makes rescue trees and configurations for tests:
// rescued files named as the engine names them, with sidecars and strictly
// increasing ctimes, as retention (age, total size) orders them.
package testlayout

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/layout"
	"github.com/relinkd/relinkd/pkg/config"
)

// Rescued files named as the engine names them (layout.Suffix); B took
// ".1" because its first name was taken.
const (
	RelA = "var/log/a.log.20261121T203000Z.pid1.fd3"
	RelB = "var/log/b.log.20261121T203000Z.pid2.fd3.1"
	RelC = "srv/c.20261121T203000Z.pid3.fd3"
)

// RescueTree creates RelA, RelB and RelC below root (1000, 2000 and 3000
// bytes) with sidecars, oldest first, with strictly increasing ctimes,
// and returns those ctimes.
func RescueTree(t testing.TB, root string) []time.Time {
	t.Helper()
	var times []time.Time
	prev := time.Time{}
	for i, rel := range []string{RelA, RelB, RelC} {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, p, strings.Repeat("x", (i+1)*1000))
		write(t, p+layout.SidecarSuffix, "{}\n")
		NewerThan(t, p+layout.SidecarSuffix, prev)
		prev = NewerThan(t, p, Ctime(t, p+layout.SidecarSuffix))
		times = append(times, prev)
	}
	return times
}

func write(t testing.TB, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Ctime returns path's ctime (not following a symlink).
func Ctime(t testing.TB, path string) time.Time {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
}

// NewerThan changes path's ctime (chmod) until it is after prev: ctime
// ticks with the kernel's coarse clock, so two files written back to back
// often share one.
func NewerThan(t testing.TB, path string, prev time.Time) time.Time {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := os.Chmod(path, 0o600); err != nil {
			t.Fatal(err)
		}
		if c := Ctime(t, path); c.After(prev) {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("ctime of %s does not advance", path)
		}
	}
}

// WriteOwned writes size bytes to path, owned by uid (directories made as
// needed, 0700).
func WriteOwned(t testing.TB, path string, size int, uid int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, uid, uid); err != nil {
		t.Fatal(err)
	}
}

// Config is the defaults with one rule that rescues everything to dirs,
// and no limit but the per-user window of an hour.
func Config(dirs ...string) *config.Config {
	cfg := config.Defaults()
	cfg.Watch = []config.Rule{{Name: "all", Paths: []string{"/**"}, Action: config.ActionRescue}}
	cfg.Rescue.Dirs = dirs
	cfg.Rescue.MinFree = config.Threshold{}
	cfg.Rescue.MaxTotalSize = 0
	cfg.Rescue.PerUser = config.PerUser{Window: config.Duration(time.Hour)}
	return cfg
}
