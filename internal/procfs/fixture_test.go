package procfs

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// readFixture returns a file of the testdata/proc tree.
func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "proc", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestParseFixture runs the parsers on the files of the fixture tree, as
// the kernel writes them (trailing newline and all).
func TestParseFixture(t *testing.T) {
	for _, tc := range []struct {
		name  string
		file  string
		parse func([]byte) (any, error)
		want  any
	}{
		{"stat", "42/stat", func(b []byte) (any, error) { return ParseStat(b) }, Stat{Comm: "my (app)", StartTime: 987654}},
		{"stat of a zombie", "77/stat", func(b []byte) (any, error) { return ParseStat(b) }, Stat{Comm: "worker", StartTime: 4242}},
		{"status uid", "42/status", func(b []byte) (any, error) { return ParseStatusUID(b) }, uint32(1000)},
		{"status caps", "42/status", func(b []byte) (any, error) { return ParseStatusCapEff(b) }, uint64(0x280004)},
		{"fdinfo", "42/fdinfo/3", func(b []byte) (any, error) { return ParseFDInfo(b) }, FDInfo{Pos: 42, Flags: 0o100002, MntID: 35}},
		{"fdinfo of a thread", "77/task/78/fdinfo/5", func(b []byte) (any, error) { return ParseFDInfo(b) }, FDInfo{Pos: 7, Flags: 0o100001, MntID: 27}},
		{"mountinfo", "1/mountinfo", func(b []byte) (any, error) { return MountIDs(b), nil }, map[int]bool{22: true, 27: true}},
		{"loadavg", "loadavg", func(b []byte) (any, error) {
			if pid, ok := ParseLoadavgLastPID(b); ok {
				return pid, nil
			}
			return nil, ErrParse
		}, 4321},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.parse(readFixture(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("-want +got:\n-%#v\n+%#v", tc.want, got)
			}
		})
	}
}

// TestParseNSLinkFixture reads the namespace links of the fixture tree:
// git keeps them as symbolic links whose text is "mnt:[N]", as the kernel
// shows them.
func TestParseNSLinkFixture(t *testing.T) {
	for _, tc := range []struct {
		name string
		pid  string
		want uint64
	}{{"host", "1", 4026531841}, {"container", "42", 4026532289}} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := os.Readlink(filepath.Join("testdata", "proc", tc.pid, "ns", "mnt"))
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseNSLink([]byte(l))
			if err != nil || got != tc.want {
				t.Errorf("ParseNSLink(%q) = %d, %v; want %d", l, got, err, tc.want)
			}
		})
	}
}
