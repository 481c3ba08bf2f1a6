package main

import (
	"flag"
	"io"
	"slices"
	"testing"
)

func TestSplitArgs(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		flags, pos []string
	}{
		{"flags first", []string{"--json", "--to", "/d", "/g/**"}, []string{"--json", "--to", "/d"}, []string{"/g/**"}},
		{"flags after a glob", []string{"/g/**", "--to", "/d", "--json"}, []string{"--to", "/d", "--json"}, []string{"/g/**"}},
		{"value with =", []string{"a", "--to=/d", "b"}, []string{"--to=/d"}, []string{"a", "b"}},
		{"bool flag takes no value", []string{"--json", "a"}, []string{"--json"}, []string{"a"}},
		{"dash-dash ends flags", []string{"--json", "--", "-x", "--to"}, []string{"--json"}, []string{"-x", "--to"}},
		{"dash-dash as a value", []string{"--to", "--", "a"}, []string{"--to", "--"}, []string{"a"}},
		{"negative value", []string{"--pid", "-1", "a"}, []string{"--pid", "-1"}, []string{"a"}},
		{"lone dash is positional", []string{"-", "--json"}, []string{"--json"}, []string{"-"}},
		{"unknown flag left to Parse", []string{"--bogus", "a"}, []string{"--bogus"}, []string{"a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fl := flag.NewFlagSet("test", flag.ContinueOnError)
			fl.SetOutput(io.Discard)
			fl.Bool("json", false, "")
			fl.String("to", "", "")
			fl.Int("pid", 0, "")
			flags, pos := splitArgs(fl, tc.args)
			if !slices.Equal(flags, tc.flags) || !slices.Equal(pos, tc.pos) {
				t.Errorf("splitArgs(%q):\n-want flags %q pos %q\n+got  flags %q pos %q", tc.args, tc.flags, tc.pos, flags, pos)
			}
		})
	}
}
