package mounts

import (
	"fmt"
	"os"
	"reflect"
	"testing"

	"github.com/relinkd/relinkd/internal/testlayout"
	"github.com/relinkd/relinkd/pkg/config"
)

func TestGlobPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"/var/log/**": "/var/log", "/srv/*.log": "/srv", "**/x": "/", "/a/b/c.log": "/a/b",
		"/*": "/", "/data/{a,b}/x": "/data", "/x/y?/z": "/x",
	} {
		if got := globPrefix(in); got != want {
			t.Errorf("globPrefix(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCoveredMounts(t *testing.T) {
	host := []Mount{
		{ID: 1, MountPoint: "/", FSType: "ext4"},
		{ID: 2, MountPoint: "/var/log", FSType: "xfs"},
		{ID: 3, MountPoint: "/var/log/journal", FSType: "ext4"},
		{ID: 4, MountPoint: "/proc", FSType: "proc"},
		{ID: 5, MountPoint: "/srv/data", FSType: "btrfs"},
		{ID: 6, MountPoint: "/home", FSType: "ext4"},
	}
	cfg := &config.Config{Watch: []config.Rule{
		{Name: "logs", Paths: []string{"/var/log/**"}},
		{Name: "srv-logs", Paths: []string{"/srv/*.log"}},
		{Name: "any", Paths: []string{"**/core"}},
	}}
	got := Covered(cfg, host)
	var lines []string
	for _, c := range got {
		lines = append(lines, fmt.Sprintf("%s %v", c.Mount.MountPoint, c.Rules))
	}
	// /srv/*.log files live on "/": /srv/data holds none of them.
	want := []string{"/ [srv-logs any]", "/home [any]", "/srv/data [any]", "/var/log [logs any]", "/var/log/journal [logs any]"}
	if !reflect.DeepEqual(lines, want) {
		t.Errorf("-want %q\n+got  %q", want, lines)
	}
}

func testConfig(dirs ...string) *config.Config { return testlayout.Config(dirs...) }

func mustMkdir(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}
