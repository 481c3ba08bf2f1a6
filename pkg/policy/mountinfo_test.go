package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/relinkd/relinkd/internal/procfs"
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
	got := CoveredMounts(cfg, host)
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

func TestEffectiveCaps(t *testing.T) {
	dir := t.TempDir()
	proc := procfs.New(dir)
	if err := os.Mkdir(filepath.Join(dir, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	status := filepath.Join(dir, "self", "status")
	writeFile(t, status, "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000280004\n")
	caps, err := proc.EffectiveCaps("self")
	if err != nil || caps != 0x280004 {
		t.Fatalf("caps %x %v", caps, err)
	}
	var held []string
	for _, c := range Capabilities() {
		if caps&(1<<c.Bit) != 0 {
			held = append(held, c.Name)
		}
	}
	// 0x280004: bits 2 (DAC_READ_SEARCH), 19 (SYS_PTRACE), 21 (SYS_ADMIN).
	if want := []string{"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}; !reflect.DeepEqual(held, want) {
		t.Errorf("held %v, want %v", held, want)
	}
	writeFile(t, status, "Name:\tx\n")
	if _, err := proc.EffectiveCaps("self"); !errors.Is(err, procfs.ErrNoCapEff) {
		t.Errorf("no CapEff: %v", err)
	}
	if _, err := proc.EffectiveCaps("none"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
