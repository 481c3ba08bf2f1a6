package main

import (
	"errors"
	"io"
	"slices"
	"testing"
)

// TestParseArgs: the grammar the subcommands rely on (flags anywhere,
// "--" ends them, negative values, unknown flags are usage errors).
func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		to   string
		json bool
		pid  int
		pos  []string
	}{
		{"flags first", []string{"--json", "--to", "/d", "/g/**"}, "/d", true, 0, []string{"/g/**"}},
		{"flags after a glob", []string{"/g/**", "--to", "/d", "--json"}, "/d", true, 0, []string{"/g/**"}},
		{"value with =", []string{"a", "--to=/d", "b"}, "/d", false, 0, []string{"a", "b"}},
		{"bool flag takes no value", []string{"--json", "a"}, "", true, 0, []string{"a"}},
		{"dash-dash ends flags", []string{"--json", "--", "-x", "--to"}, "", true, 0, []string{"-x", "--to"}},
		{"negative value", []string{"--pid", "-1", "a"}, "", false, -1, []string{"a"}},
		{"lone dash is positional", []string{"-", "--json"}, "", true, 0, []string{"-"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fl := newFlagSet("test")
			json := fl.Bool("json", false, "")
			to := fl.String("to", "", "")
			pid := fl.Int("pid", 0, "")
			pos, err := parseArgs(io.Discard, fl, "", tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if *to != tc.to || *json != tc.json || *pid != tc.pid || !slices.Equal(pos, tc.pos) {
				t.Errorf("to %q json %v pid %d pos %q; want %q %v %d %q", *to, *json, *pid, pos, tc.to, tc.json, tc.pid, tc.pos)
			}
		})
	}
	for _, args := range [][]string{{"--bogus", "a"}, {"a", "-x"}, {"--pid", "many"}} {
		fl := newFlagSet("test")
		fl.Int("pid", 0, "")
		if _, err := parseArgs(io.Discard, fl, "", args); !errors.Is(err, errUsage) {
			t.Errorf("%q: want a usage error, got %v", args, err)
		}
	}
}
