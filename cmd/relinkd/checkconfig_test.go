package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/relinkd/relinkd/pkg/policy"
)

func runBinary(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(relinkdBinary(t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
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
		got, err := policy.Parse("out.yaml", []byte(rest))
		if err != nil {
			t.Fatalf("printed configuration does not parse: %v\n%s", err, rest)
		}
		want, _ := policy.Load(good)
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
}
