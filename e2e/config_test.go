package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
)

// TestReloadRefusesEmptyAndSpecialFiles: on SIGHUP an empty file, a file
// that lost its watch rules and a FIFO at the config path are refused at
// once, with the reason, and the running rules stay; an explicit
// "watch: []" is accepted; SIGTERM still stops the daemon afterwards.
func TestReloadRefusesEmptyAndSpecialFiles(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.Mount(t, "tmpfs", 64)
	a, rescued := filepath.Join(mnt, "a"), filepath.Join(mnt, "rescued")
	mkdirs(t, a)
	cfgA := baseConfig("1h", true, rule("a", "rescue", []string{a + "/**"}), rescued)
	cfg := writeConfig(t, cfgA)
	d := startDaemon(t, cfg)

	write := func(data string) {
		t.Helper()
		_ = os.Remove(cfg)
		if err := os.WriteFile(cfg, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Truncated just before its watch section: valid YAML, no rules.
	truncated := cfgA[:strings.Index(cfgA, "watch:")]
	steps := []struct {
		name    string
		prepare func()
		want    string // in the error field
		errors  string // in the errors list ("" when there is none)
	}{
		{"empty file", func() { write("") }, "relinkd.yaml:1: empty: no settings", "relinkd.yaml:1: empty: no settings"},
		{"comments only", func() { write("# scan:\n#   interval: 30s\n") }, "relinkd.yaml:1: empty", "relinkd.yaml:1: empty"},
		{"truncated before watch", func() { write(truncated) }, "relinkd.yaml:1: watch: missing: the running rules would be replaced by the built-in ones", "relinkd.yaml:1: watch: missing"},
		{"FIFO", func() {
			_ = os.Remove(cfg)
			if err := unix.Mkfifo(cfg, 0o644); err != nil {
				t.Fatal(err)
			}
		}, cfg + ": not a regular file (a FIFO)", ""},
		{"directory", func() {
			_ = os.Remove(cfg)
			if err := os.Mkdir(cfg, 0o755); err != nil {
				t.Fatal(err)
			}
		}, cfg + ": not a regular file (a directory)", ""},
	}
	for i, st := range steps {
		st.prepare()
		d.Signal(syscall.SIGHUP)
		fails := d.WaitCount("config reload failed after "+st.name, i+1, 10*time.Second, Msg("config reload failed"))
		ev := fails[i]
		if !strings.Contains(ev.str("error"), st.want) {
			t.Errorf("%s: error %q lacks %q", st.name, ev.str("error"), st.want)
		}
		if st.errors != "" {
			errs, _ := ev["errors"].([]any)
			if len(errs) != 1 {
				t.Errorf("%s: errors = %v, want one", st.name, ev["errors"])
			} else if s, _ := errs[0].(string); !strings.HasPrefix(s, st.errors) {
				t.Errorf("%s: errors[0] = %q, want %q…", st.name, s, st.errors)
			}
		}
	}
	if err := os.Remove(cfg); err != nil {
		t.Fatal(err)
	}

	// Rule a is still in force.
	p := filepath.Join(a, "1.log")
	holdFile(t, p, []byte("a1"))
	d.Wait("rescue in a after the refused reloads", 10*time.Second, Rescued(p))
	if n := len(d.Events(Msg("config reloaded"))); n != 0 {
		t.Errorf("%d config reloaded events, want 0", n)
	}

	// "watch: []" is an explicit choice: watch nothing.
	write(strings.Replace(cfgA, cfgA[strings.Index(cfgA, "watch:"):strings.Index(cfgA, "rescue:")], "watch: []\n", 1))
	d.Signal(syscall.SIGHUP)
	ev := d.Wait("config reloaded with watch: []", 10*time.Second, Msg("config reloaded"))
	if ev.num("rules") != 0 {
		t.Errorf("rules = %v after watch: [], want 0", ev["rules"])
	}

	d.Signal(syscall.SIGTERM)
	if err := d.WaitExit(10 * time.Second); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}
