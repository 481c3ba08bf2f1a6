package layout

import (
	"strings"
	"testing"
	"time"
)

func TestIsTemp(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{".app.log.relinkd-tmp-0a1b2c3d4e5f", true},
		{".relinkd-tmp-0a1b2c3d4e5f", true},
		{".app.log.20261121T203000Z.pid1.fd3.relinkd.json.relinkd-tmp-0a1b2c3d4e5f", true}, // a sidecar being written
		{"app.log.relinkd-tmp-0a1b2c3d4e5f", false},                                        // not hidden: a rescued file's own name
		{"app.log.20261121T203000Z.pid1.fd3", false},
		{"app.log" + SidecarSuffix, false},
		// A hidden file whose own name holds the marker, rescued: not debris.
		{".cache.relinkd-tmp-x.20261121T203000Z.pid123.fd4", false},
		{".cache.relinkd-tmp-0a1b2c3d4e5f.20261121T203000Z.pid123.fd4", false},
		{".cache.relinkd-tmp-x", false},
		{".app.log.relinkd-tmp-0a1b2c3d4e5", false},   // 11 hex digits
		{".app.log.relinkd-tmp-0a1b2c3d4e5f0", false}, // 13: the marker is not followed by exactly 12
		{".app.log.relinkd-tmp-0A1B2C3D4E5F", false},  // hex.EncodeToString writes lower case
		{".app.log.relinkd-tmp-0a1b2c3d4e5g", false},
		{".relinkd-tmp-", false},
		{"", false},
	} {
		if got := IsTemp(tc.name); got != tc.want {
			t.Errorf("IsTemp(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestIsRescued(t *testing.T) {
	long := strings.Repeat("é", 90) // cut by RelName to fit NAME_MAX; any leaf is fine
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"app.log.20261121T203000Z.pid123.fd4", true},
		{"app.log.20261121T203000Z.pid123.fd4.1", true},
		{"app.log.20261121T203000Z.pid123.fd4.999", true},
		{"app.log.20261121T203000Z.pid1.fd0", true},
		{"unnamed.20261121T203000Z.pid1.fd0", true},
		{".cache.relinkd-tmp-x.20261121T203000Z.pid123.fd4", true},
		{"notes.txt.relinkd.json.20261121T203000Z.pid1.fd3", true}, // a rescued file named like a sidecar
		{long + ".20261121T203000Z.pid1.fd3", true},
		{".20261121T203000Z.pid1.fd3", true}, // empty leaf: RelName can cut a leaf of stray bytes to nothing
		{"app.log.20261121T203000Z.pid123.fd4.0", false},
		{"app.log.20261121T203000Z.pid123.fd4.1000", false},
		{"app.log.20261121T203000Z.pid123.fd4.01", false},
		{"app.log.20261121T203000Z.pid123.fd4.1.1", false},
		{"app.log.20261121T203000Z.pid123.fd", false},
		{"app.log.20261121T203000Z.pid123.fd-4", false},
		{"app.log.20261121T203000Z.pid0123.fd4", false},
		{"app.log.20261121T203000Z.pid.fd4", false},
		{"app.log.20261121T203000Z.fd4", false},
		{"app.log.20261321T203000Z.pid123.fd4", false}, // month 13
		{"app.log.20261121T2030000.pid123.fd4", false},
		{"app.log.2026-11-21T20:30Z.pid123.fd4", false},
		{"app.log20261121T203000Z.pid123.fd4", false}, // no dot before the time
		{"20261121T203000Z.pid123.fd4", false},
		{"app.log.20261121T203000Z.pid123.fd4" + SidecarSuffix, false},
		{".app.log.relinkd-tmp-0a1b2c3d4e5f", false},
		{"important.db", false},
		{"app.log.1", false},
		{"", false},
	} {
		if got := IsRescued(tc.name); got != tc.want {
			t.Errorf("IsRescued(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestIsSidecar(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"app.log.20261121T203000Z.pid123.fd4" + SidecarSuffix, true},
		{"app.log.20261121T203000Z.pid123.fd4.2" + SidecarSuffix, true},
		{"notes.txt.relinkd.json.20261121T203000Z.pid1.fd3" + SidecarSuffix, true},
		{"notes.txt" + SidecarSuffix, false}, // not the sidecar of a rescued name
		{SidecarSuffix, false},
		{"app.log.20261121T203000Z.pid123.fd4", false},
		{"app.log.20261121T203000Z.pid123.fd4.relinkd.jsonx", false},
	} {
		if got := IsSidecar(tc.name); got != tc.want {
			t.Errorf("IsSidecar(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestSuffix: what the engine appends is what IsRescued recognises, at
// any time and for any pid and descriptor.
func TestSuffix(t *testing.T) {
	at := time.Date(2026, 11, 21, 21, 30, 0, 0, time.FixedZone("CET", 3600))
	if got, want := Suffix(at, 123, 4), ".20261121T203000Z.pid123.fd4"; got != want {
		t.Errorf("Suffix = %q, want %q", got, want)
	}
	for _, tc := range []struct {
		at      time.Time
		pid, fd int
	}{
		{time.Unix(0, 0), 1, 0},
		{time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), 4194304, 1 << 20},
		{time.Date(2000, 2, 29, 0, 0, 0, 0, time.UTC), 2, 2147483647},
	} {
		name := "a" + Suffix(tc.at, tc.pid, tc.fd)
		if !IsRescued(name) || !IsRescued(name+".7") || !IsSidecar(name+SidecarSuffix) || IsTemp(name) {
			t.Errorf("%q: IsRescued %v, IsSidecar %v, IsTemp %v", name, IsRescued(name), IsSidecar(name+SidecarSuffix), IsTemp(name))
		}
	}
}

func TestParseRescued(t *testing.T) {
	at := time.Date(2026, 11, 21, 20, 30, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		want Name
		ok   bool
	}{
		{"app.db-wal" + Suffix(at, 123, 4), Name{Leaf: "app.db-wal", Time: at, PID: 123, FD: 4}, true},
		{"app.log" + Suffix(at, 1, 0) + ".7", Name{Leaf: "app.log", Time: at, PID: 1, FD: 0, K: 7}, true},
		{"x.fd.pid" + Suffix(at, 9, 10), Name{Leaf: "x.fd.pid", Time: at, PID: 9, FD: 10}, true},
		{"app.log", Name{}, false},
		{"app.log" + Suffix(at, 1, 2) + SidecarSuffix, Name{}, false},
		{"app.log" + Suffix(at, 1, 2) + ".1000", Name{}, false},
	} {
		got, ok := ParseRescued(tc.name)
		if ok != tc.ok || got != tc.want {
			t.Errorf("ParseRescued(%q) = %+v, %v; want %+v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}
