package config

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLoadFileKinds: only a regular file is read, a FIFO without
// blocking, and at most MaxConfigBytes of it.
func TestLoadFileKinds(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "ok.yaml")
	writeFile(t, regular, "log: {level: warn}\n")
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock.yaml")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	link := filepath.Join(dir, "link.yaml")
	if err := os.Symlink(regular, link); err != nil {
		t.Fatal(err)
	}
	fifoLink := filepath.Join(dir, "fifo-link.yaml")
	if err := os.Symlink(fifo, fifoLink); err != nil {
		t.Fatal(err)
	}
	// A file of exactly the limit parses; one byte more does not.
	pad := func(n int) string {
		head := "log: {level: warn}\n"
		return head + "#" + strings.Repeat("x", n-len(head)-2) + "\n"
	}
	atLimit := filepath.Join(dir, "at-limit.yaml")
	writeFile(t, atLimit, pad(MaxConfigBytes))
	over := filepath.Join(dir, "over.yaml")
	writeFile(t, over, pad(MaxConfigBytes+1))
	huge := filepath.Join(dir, "huge.yaml")
	if err := os.WriteFile(huge, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(huge, 1<<40); err != nil { // sparse: 1 TiB of zeros
		t.Fatal(err)
	}

	tests := []struct {
		name string
		path string
		is   error  // nil: parses
		want string // in the message
	}{
		{"regular file", regular, nil, ""},
		{"symlink to a regular file", link, nil, ""},
		{"file at the limit", atLimit, nil, ""},
		{"FIFO", fifo, ErrNotRegular, fifo + ": not a regular file (a FIFO)"},
		{"symlink to a FIFO", fifoLink, ErrNotRegular, fifoLink + ": not a regular file (a FIFO)"},
		{"character device", "/dev/zero", ErrNotRegular, "/dev/zero: not a regular file (a character device)"},
		{"directory", dir, ErrNotRegular, dir + ": not a regular file (a directory)"},
		{"socket", sock, ErrNotRegular, sock + ": not a regular file (a socket)"},
		{"one byte over the limit", over, ErrFileTooLarge, over + ": too large: more than 512KiB, the limit for a configuration file"},
		{"sparse 1 TiB file", huge, ErrFileTooLarge, huge + ": too large: more than 512KiB"},
		{"missing file", filepath.Join(dir, "none.yaml"), os.ErrNotExist, "no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			type result struct {
				cfg *Config
				err error
			}
			done := make(chan result, 1)
			go func() {
				cfg, err := Load(tt.path)
				done <- result{cfg, err}
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("Load(%s) still blocked after 10s", tt.path)
			}
			if tt.is == nil {
				if r.err != nil {
					t.Fatal(r.err)
				}
				if r.cfg.Log.Level != "warn" {
					t.Errorf("log.level = %q, want warn", r.cfg.Log.Level)
				}
				return
			}
			if r.cfg != nil || !errors.Is(r.err, tt.is) {
				t.Fatalf("err = %v, want %v", r.err, tt.is)
			}
			if !strings.Contains(r.err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", r.err, tt.want)
			}
		})
	}
}

// TestReadRegularFIFO: when a FIFO replaces the file between the stat and
// the open, the open does not wait for a writer and the fstat refuses it.
func TestReadRegularFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo.yaml")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := readRegular(fifo)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNotRegular) {
			t.Errorf("err = %v, want ErrNotRegular", err)
		}
	case <-time.After(10 * time.Second):
		// Unblock the open so the goroutine ends.
		if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		t.Fatal("readRegular blocked on a FIFO")
	}
}

// TestCheckReload: a reload does not swap the running rules for the
// built-in ones because the new file has no watch key; "watch: []" and
// unchanged rules pass.
func TestCheckReload(t *testing.T) {
	parse := func(y string) *Config {
		t.Helper()
		cfg, err := Parse("/etc/relinkd/relinkd.yaml", []byte(y))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	own := parse("watch:\n  - {name: app, paths: [/srv/app/**]}\n")
	builtin := parse("log: {level: info}\n")
	embedded, err := LoadDefault()
	if err != nil {
		t.Fatal(err)
	}
	if !own.RulesFromFile || builtin.RulesFromFile || !embedded.RulesFromFile {
		t.Fatalf("RulesFromFile: own %v, built-in %v, embedded %v", own.RulesFromFile, builtin.RulesFromFile, embedded.RulesFromFile)
	}
	const refused = `relinkd.yaml:1: watch: missing: the running rules would be replaced by the built-in ones (list the rules, or write "watch: []" to watch nothing)`
	tests := []struct {
		name          string
		running, next *Config
		want          string // "" when accepted
	}{
		{"own rules, then none", own, builtin, refused},
		{"own rules, then watch: []", own, parse("watch: []\n"), ""},
		{"own rules, then other rules", own, parse("watch:\n  - {name: b, paths: [/b/**]}\n"), ""},
		{"built-in rules, then none", builtin, builtin, ""},
		{"embedded default, then none", embedded, builtin, ""},
		{"watch: [], then none", parse("watch: []\n"), builtin, refused},
		{"the built-in rules written out, then none", parse(string(builtin.YAML())), builtin, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckReload(tt.running, tt.next)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var es Errors
			if !errors.As(err, &es) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v (%T), want Errors", err, err)
			}
			if err.Error() != tt.want {
				t.Errorf("-want %s\n+got  %s", tt.want, err)
			}
		})
	}
}

// TestSameRuleComparesEveryField: a field added to Rule must be compared
// by sameRule, or CheckReload would take a changed rule for the same one.
func TestSameRuleComparesEveryField(t *testing.T) {
	base := Rule{Name: "a", Paths: []string{"/a"}, Exclude: []string{"/a/x"}, Commands: []string{"c"},
		Users: []string{"u"}, MinSize: 1, MaxSize: 2, Action: ActionRescue}
	if !sameRule(base, base) {
		t.Fatal("a rule differs from itself")
	}
	if !sameRule(Rule{Name: "a"}, Rule{Name: "a", Exclude: []string{}}) {
		t.Error("nil and empty lists differ")
	}
	changes := map[string]func(*Rule){
		"Name":     func(r *Rule) { r.Name = "b" },
		"Paths":    func(r *Rule) { r.Paths = []string{"/b"} },
		"Exclude":  func(r *Rule) { r.Exclude = nil },
		"Commands": func(r *Rule) { r.Commands = []string{"d"} },
		"Users":    func(r *Rule) { r.Users = nil },
		"MinSize":  func(r *Rule) { r.MinSize = 3 },
		"MaxSize":  func(r *Rule) { r.MaxSize = 0 },
		"Action":   func(r *Rule) { r.Action = ActionReport },
	}
	fields := reflect.TypeFor[Rule]()
	for i := range fields.NumField() {
		name := fields.Field(i).Name
		change, ok := changes[name]
		if !ok {
			t.Errorf("Rule.%s: no case here; compare it in sameRule and add one", name)
			continue
		}
		r := base
		change(&r)
		if sameRule(base, r) {
			t.Errorf("a change of Rule.%s goes unnoticed", name)
		}
	}
}
