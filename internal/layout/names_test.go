package layout

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relinkd/relinkd/pkg/scanner"
)

func TestCheckRescuedName(t *testing.T) {
	at := time.Date(2026, 11, 21, 20, 30, 0, 0, time.UTC)
	for _, tc := range []struct {
		name, rel, path string
		pid, fd         int
		mntns           uint64
		container       string
		ok              bool
	}{
		{"plain", "var/log/app.log" + Suffix(at, 12, 3), "/var/log/app.log", 12, 3, 0, "", true},
		{"taken name", "var/log/app.log" + Suffix(at, 12, 3) + ".2", "/var/log/app.log", 12, 3, 0, "", true},
		{"control bytes", "srv/a_b" + Suffix(at, 1, 4), "/srv/a\nb", 1, 4, 0, "", true},
		{"container", "0123abcd/var/log/app.log" + Suffix(at, 12, 3), "/var/log/app.log", 12, 3, 99, "0123abcd", true},
		{"mount namespace", "mntns-99/var/log/app.log" + Suffix(at, 12, 3), "/var/log/app.log", 12, 3, 99, "", true},
		{"container, inside it", "var/log/app.log" + Suffix(at, 12, 3), "/var/log/app.log", 12, 3, 99, "0123abcd", true},
		{"another container", "feed/var/log/app.log" + Suffix(at, 12, 3), "/var/log/app.log", 12, 3, 99, "0123abcd", false},
		{"a container's directory, no container", "0123abcd/var/log/app.log" + Suffix(at, 12, 3), "/var/log/app.log", 12, 3, 0, "", false},
		{"other pid", "var/log/app.log" + Suffix(at, 12, 3), "/var/log/app.log", 13, 3, 0, "", false},
		{"other fd", "var/log/app.log" + Suffix(at, 12, 3), "/var/log/app.log", 12, 4, 0, "", false},
		{"other path", "var/log/app.log" + Suffix(at, 12, 3), "/etc/passwd", 12, 3, 0, "", false},
		{"not rescued", "var/log/app.log", "/var/log/app.log", 12, 3, 0, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &scanner.Candidate{Path: []byte(tc.path), PID: tc.pid, FD: tc.fd, MntNS: tc.mntns, ContainerID: tc.container}
			err := CheckRescuedName(tc.rel, c)
			if (err == nil) != tc.ok {
				t.Errorf("CheckRescuedName(%q, %+v) = %v, want ok %v", tc.rel, c, err, tc.ok)
			}
		})
	}
}

func TestRelName(t *testing.T) {
	now := time.Date(2026, 11, 21, 20, 30, 0, 0, time.FixedZone("x", 3600))
	long := strings.Repeat("é", 200) // 400 bytes
	tests := []struct {
		path, want string
	}{
		{"/var/log/app.log", "var/log/app.log.20261121T193000Z.pid123.fd4"},
		{"/a/../b/./c", "a/b/c.20261121T193000Z.pid123.fd4"},
		{"/x/a\nb\x7f", "x/a_b_.20261121T193000Z.pid123.fd4"},
		{"", "unnamed.20261121T193000Z.pid123.fd4"},
		{"/../..", "unnamed.20261121T193000Z.pid123.fd4"},
	}
	for _, tt := range tests {
		got := RelName(&scanner.Candidate{Path: []byte(tt.path), PID: 123, FD: 4}, now)
		if got != tt.want {
			t.Errorf("RelName(%q) = %q, want %q", tt.path, got, tt.want)
		}
		// Retention removes only what it recognises as written here.
		if b := filepath.Base(got); !IsRescued(b) || !IsSidecar(b+SidecarSuffix) {
			t.Errorf("RelName(%q) = %q: not recognised as a rescued name by layout", tt.path, got)
		}
	}
	got := RelName(&scanner.Candidate{Path: []byte("/d/" + long), PID: 1, FD: 1}, now)
	base := filepath.Base(got)
	// It must fit the engine's budget, which keeps room for ".999" too:
	// a longer leaf would be cut by the engine, suffix first.
	if len(base) > MaxLeaf || !strings.HasSuffix(base, ".pid1.fd1") || !strings.HasPrefix(got, "d/é") {
		t.Errorf("long name: %q (%d bytes)", got, len(base))
	}
	if !IsRescued(base) {
		t.Errorf("long name %q not recognised as a rescued name by layout", base)
	}
}
