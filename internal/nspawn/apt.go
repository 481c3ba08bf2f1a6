package nspawn

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// AptMirror returns the archive URI that the machine's apt sources under
// etcApt (normally /etc/apt) use for suite, so the root filesystem comes
// from the same mirror as the machine's own packages (on a machine whose
// only network is its package mirror, no other would answer). apt's order
// is kept: sources.list first, then sources.list.d in name order; both the
// one-line (.list) and the deb822 (.sources) formats are read.
func AptMirror(etcApt, suite string) (string, error) {
	files := []string{filepath.Join(etcApt, "sources.list")}
	more, _ := filepath.Glob(filepath.Join(etcApt, "sources.list.d", "*"))
	sort.Strings(more)
	files = append(files, more...)
	for _, f := range files {
		var parse func([]byte, string) []string
		switch {
		case strings.HasSuffix(f, ".list"):
			parse = listMirrors
		case strings.HasSuffix(f, ".sources"):
			parse = deb822Mirrors
		default:
			continue // apt ignores other names (.disabled, .save, …)
		}
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if uris := parse(data, suite); len(uris) > 0 {
			return uris[0], nil
		}
	}
	return "", fmt.Errorf("nspawn: no deb source for suite %q in %s", suite, etcApt)
}

// listMirrors returns the URIs of the "deb" lines of a one-line-style
// sources.list(5) for suite: `deb [ option=value … ] uri suite component…`.
func listMirrors(data []byte, suite string) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if len(f) > 0 && strings.HasPrefix(f[0], "[") {
			// Options may contain spaces inside the brackets.
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) > 0 {
				f = f[1:]
			}
		}
		if len(f) >= 2 && f[1] == suite {
			out = append(out, f[0])
		}
	}
	return out
}

// deb822Mirrors returns the URIs of the enabled "deb" stanzas of a
// deb822-style sources file (sources.list(5)) whose Suites include suite.
// Stanzas are separated by blank lines; a line starting with white space
// continues the field before it.
func deb822Mirrors(data []byte, suite string) []string {
	var out []string
	fields := map[string][]string{}
	var last string
	flush := func() {
		enabled := len(fields["enabled"]) == 0 || !strings.EqualFold(fields["enabled"][0], "no")
		if enabled && slices.Contains(fields["types"], "deb") && slices.Contains(fields["suites"], suite) {
			out = append(out, fields["uris"]...)
		}
		fields, last = map[string][]string{}, ""
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.TrimSpace(line) == "":
			flush()
		case strings.HasPrefix(line, "#"):
		case line[0] == ' ' || line[0] == '\t':
			if last != "" {
				fields[last] = append(fields[last], strings.Fields(line)...)
			}
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			last = strings.ToLower(strings.TrimSpace(k))
			fields[last] = strings.Fields(v)
		}
	}
	flush()
	return out
}
