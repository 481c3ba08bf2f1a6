package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
)

// TestDoctor runs the real binary against a configuration that watches an
// XFS (reflink) and an ext4 (no reflink) loop mount, and reads its report.
func TestDoctor(t *testing.T) {
	testfs.RequireRoot(t)
	x := testfs.Mount(t, "xfs", 300)
	e := testfs.Mount(t, "ext4", 32)
	if err := os.MkdirAll(x+"/rescue", 0o700); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(t.TempDir(), "relinkd.yaml")
	cfg := fmt.Sprintf(`watch:
  - name: xfs-data
    paths: ["%s/**"]
  - name: ext4-data
    paths: ["%s/**"]
rescue:
  dirs: ["%s/rescue"]
  min_free: 5%%
`, x, e, x)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	before := listDir(t, e)
	out, errOut, code := runBinary(t, "doctor", "--config", cfgFile)
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, errOut, out)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^configuration: ` + regexp.QuoteMeta(cfgFile) + `$`),
		regexp.MustCompile(`(?m)^  CAP_SYS_PTRACE\s+held`),
		regexp.MustCompile(`(?m)^  CAP_CHOWN\s+held`),
		regexp.MustCompile(`(?m)^  O_TMPFILE\s+yes`),
		regexp.MustCompile(`(?m)^  openat2\s+yes`),
		regexp.MustCompile(`(?m)^  pidfd_open\s+yes`),
		regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(x) + `\s+xfs\s+\S+ of \S+ \(\d+%\)\s+yes\s+` + regexp.QuoteMeta(x+"/rescue") + ` \(dir, same mount.*xfs-data$`),
		regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(e) + `\s+ext4\s+\S+ of \S+ \(\d+%\)\s+no \(\w+\)\s+` + regexp.QuoteMeta(e+"/.relinkd") + ` \(fs_dir, same mount.*ext4-data$`),
	} {
		if !want.MatchString(out) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
	// The probes leave nothing behind and create no rescue directory.
	if after := listDir(t, e); after != before {
		t.Errorf("doctor changed %s: %s → %s", e, before, after)
	}
	if after := listDir(t, x+"/rescue"); after != "" {
		t.Errorf("doctor left %s in the rescue dir", after)
	}
}

func listDir(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return strings.Join(names, ",")
}

// TestDoctorProblem: a covered filesystem where nothing can be rescued
// (mounted read-only) is reported with the reason, and doctor exits 1.
func TestDoctorProblem(t *testing.T) {
	testfs.RequireRoot(t)
	ro := testfs.Mount(t, "tmpfs", 8)
	if err := unix.Mount("", ro, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(t.TempDir(), "relinkd.yaml")
	cfg := fmt.Sprintf("watch:\n  - name: ro\n    paths: [\"%s/**\"]\nrescue:\n  dirs: []\n", ro)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runBinary(t, "doctor", "--config", cfgFile)
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s\n%s", code, errOut, out)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(ro) + `\s+tmpfs\s.*none: .*fs_dir ` + regexp.QuoteMeta(ro+"/.relinkd") + `: ` + regexp.QuoteMeta(ro) + ` is mounted read-only`),
		regexp.MustCompile(`(?m)^1 problem\(s\) found`),
	} {
		if !want.MatchString(out) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
}
