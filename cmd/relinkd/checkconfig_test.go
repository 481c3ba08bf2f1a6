package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/pkg/config"
)

// runBinary runs the real binary; one still running after two minutes
// fails the test instead of hanging it.
func runBinary(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runBinaryWithin(t, 2*time.Minute, args...)
}

// runBinaryWithin is runBinary with a time limit: a binary still running
// after it is killed and fails the test.
func runBinaryWithin(t *testing.T, limit time.Duration, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, relinkdBinary(t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("relinkd %v did not exit within %v (stderr %q)", args, limit, errb.String())
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("run %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("log: {level: debug}\nrescue: {max_file_size: 2GiB}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "relinkd.yaml")
	if err := os.WriteFile(bad, []byte("scan:\n  interval: 7x\nwatch:\n  - name: a\n    paths: [/x]\n    max_size: 10 GB\nbogus: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("valid file: ok and the effective configuration", func(t *testing.T) {
		out, errOut, code := runBinary(t, "check-config", good)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		first, rest, _ := strings.Cut(out, "\n")
		if first != "ok" {
			t.Fatalf("first line %q, want ok", first)
		}
		got, err := config.Parse("out.yaml", []byte(rest))
		if err != nil {
			t.Fatalf("printed configuration does not parse: %v\n%s", err, rest)
		}
		want, _ := config.Load(good)
		got.File, want.File = "", ""
		// good.yaml has no watch key; the printed configuration lists
		// the built-in rules it takes.
		got.RulesFromFile = want.RulesFromFile
		if !reflect.DeepEqual(got, want) {
			t.Errorf("effective configuration differs:\n%s", rest)
		}
		if want.Log.Level != "debug" || want.Rescue.MaxFileSize != 2<<30 || len(want.Watch) == 0 {
			t.Errorf("defaults or values not filled: %+v", want)
		}
	})
	t.Run("invalid file: every error with file, line and field", func(t *testing.T) {
		out, errOut, code := runBinary(t, "check-config", bad)
		if code == 0 || out != "" {
			t.Fatalf("exit %d, stdout %q", code, out)
		}
		for _, want := range []string{
			`relinkd.yaml:2: scan.interval: "7x" is not a duration`,
			`relinkd.yaml:6: watch[0].max_size: "10 GB" is not a size`,
			`relinkd.yaml:7: bogus: unknown key`,
		} {
			if !strings.Contains(errOut, want) {
				t.Errorf("stderr lacks %q:\n%s", want, errOut)
			}
		}
	})
	t.Run("missing file", func(t *testing.T) {
		if _, errOut, code := runBinary(t, "check-config", filepath.Join(dir, "none.yaml")); code != 1 || !strings.Contains(errOut, "no such file") {
			t.Errorf("exit %d: %s", code, errOut)
		}
	})
	t.Run("usage", func(t *testing.T) {
		if _, _, code := runBinary(t, "check-config"); code != 2 {
			t.Errorf("no argument: exit %d, want 2", code)
		}
	})
	t.Run("shipped example", func(t *testing.T) {
		if out, errOut, code := runBinary(t, "check-config", "../../configs/relinkd.yaml"); code != 0 || !strings.HasPrefix(out, "ok\n") {
			t.Errorf("configs/relinkd.yaml: exit %d %s", code, errOut)
		}
	})
	for _, tt := range badFiles(t, dir) {
		t.Run(tt.name, func(t *testing.T) {
			// An error at once: reading the file never blocks (a FIFO)
			// nor goes on forever (/dev/zero).
			out, errOut, code := runBinaryWithin(t, 10*time.Second, "check-config", tt.path)
			if code != 1 || out != "" || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit 1 and %q", code, out, errOut, tt.want)
			}
		})
	}
}

// TestRunRefusesBadConfig: `relinkd run` refuses at once what check-config
// refuses, before it starts anything; an empty file does not mean "run the
// defaults".
func TestRunRefusesBadConfig(t *testing.T) {
	for _, tt := range badFiles(t, t.TempDir()) {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := runBinaryWithin(t, 10*time.Second, "run", "--config", tt.path)
			if code != 1 || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 and %q", code, errOut, tt.want)
			}
		})
	}
}

type badFile struct{ name, path, want string }

// badFiles makes, in dir, files that are not a configuration, each with
// what the error about it says.
func badFiles(t *testing.T, dir string) []badFile {
	t.Helper()
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "conf.d")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return []badFile{
		{"FIFO without a writer", fifo, fifo + ": not a regular file (a FIFO)"},
		{"/dev/zero", "/dev/zero", "/dev/zero: not a regular file (a character device)"},
		{"directory", sub, sub + ": not a regular file (a directory)"},
		{"oversize file", write("big.yaml", "{}\n#"+strings.Repeat("x", config.MaxConfigBytes)), "big.yaml: too large: more than 512KiB, the limit for a configuration file"},
		{"empty file", write("empty.yaml", ""), `empty.yaml:1: empty: no settings (write "{}" to take every default)`},
		{"comments only", write("comments.yaml", "# scan:\n#   interval: 30s\n"), `comments.yaml:1: empty: no settings`},
		{"control character", write("ctrl.yaml", "log:\n  level: \x01\n"), `ctrl.yaml:2: syntax: control character U+0001 at column 10`},
		{"unknown anchor", write("anchor.yaml", "log:\n  level: info\nmetrics: *nope\n"), `anchor.yaml:3: syntax: unknown anchor 'nope' referenced`},
	}
}
