package relink

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestReadSidecar(t *testing.T) {
	const good = `{"path":"/var/log/app.log","rescued_to":"/r/var/log/app.log.X","method":"copy","bytes":5,` +
		`"pid":1,"fd":3,"comm":"app","uid":0,"rule":null,"duration":"1ms","dev":2049,"ino":77,"ts":"2026-11-21T20:30:01Z"}`
	for _, tc := range []struct {
		name, data string
		ok         bool
	}{
		{"engine's", good, true},
		{"newer fields", strings.Replace(good, `"ts"`, `"following":true,"rescued_ino":78,"container_id":"abc","future":1,"ts"`, 1), true},
		{"not JSON", `{"path":`, false},
		{"two values", good + good, false},
		{"unknown method", strings.Replace(good, `"copy"`, `"teleport"`, 1), false},
		{"relative path", strings.Replace(good, `"/var/log/app.log"`, `"app.log"`, 1), false},
		{"relative rescued_to", strings.Replace(good, `"/r/var`, `"r/var`, 1), false},
		{"no inode", strings.Replace(good, `"ino":77`, `"ino":0`, 1), false},
		{"no time", strings.Replace(good, `,"ts":"2026-11-21T20:30:01Z"`, ``, 1), false},
		{"negative size", strings.Replace(good, `"bytes":5`, `"bytes":-1`, 1), false},
		{"bad base64", strings.Replace(good, `"ts"`, `"path_base64":"!!","ts"`, 1), false},
		{"too large", good[:len(good)-1] + `,"pad":"` + strings.Repeat("x", 70<<10) + `"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadSidecar([]byte(tc.data))
			if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrSidecar) {
				t.Errorf("ReadSidecar: %v, want ok %v (or ErrSidecar)", err, tc.ok)
			}
		})
	}
	s, err := ReadSidecar([]byte(strings.Replace(good, `"ts"`, `"path_base64":"L3Zhci9sb2cv/w==","ts"`, 1)))
	if err != nil || string(s.OriginalPath()) != "/var/log/\xff" {
		t.Errorf("path_base64: %q, %v", s.OriginalPath(), err)
	}
}

// TestVerify: what a sidecar claims must match the file beside it, for
// sidecars that record the rescued file's inode and for older ones.
func TestVerify(t *testing.T) {
	at := time.Date(2026, 11, 21, 20, 30, 1, 0, time.UTC)
	// old is a sidecar without the rescued file's identity; recorded one
	// with it (rescued dev 10, ino 30).
	old := func(m Method, bytes int64, following, followed bool) Sidecar {
		return Sidecar{Path: "/var/log/app.log", RescuedTo: "/r/app", Method: m, Bytes: bytes,
			Dev: 10, Ino: 20, Followed: followed, Following: following, Time: at}
	}
	recorded := func(s Sidecar) Sidecar {
		s.RescuedDev, s.RescuedIno = 10, 30
		if s.Method == MethodLink {
			s.RescuedIno = 20
		}
		return s
	}
	file := func(ino uint64, size int64, grown bool) Found {
		f := Found{Path: "/r/app", Dev: 10, Ino: ino, Nlink: 1, Size: size, Mtime: at.Add(-time.Hour), SidecarMtime: at}
		if grown {
			f.Mtime = at.Add(time.Minute) // appended after the sidecar was written
		}
		return f
	}
	linked := func(f Found) Found { f.Nlink = 2; return f }
	for _, tc := range []struct {
		name   string
		s      Sidecar
		f      Found
		ok     bool
		follow string
	}{
		{"copy as claimed", old(MethodCopy, 100, false, false), file(30, 100, false), true, FollowNone},
		{"copy larger than claimed", old(MethodCopy, 100, false, false), file(30, 200, false), false, FollowNone},
		{"copy smaller than claimed", old(MethodCopy, 100, false, false), file(30, 50, true), false, FollowNone},
		{"older sidecar, grown since", old(MethodCopy, 100, false, false), file(30, 200, true), true, FollowActive},
		{"older sidecar, grown since, restored by link", old(MethodCopy, 100, false, false), linked(file(30, 200, true)), false, FollowNone},
		{"following", old(MethodReflink, 100, true, false), file(30, 200, false), true, FollowActive},
		{"followed", old(MethodCopy, 300, false, true), file(30, 300, false), true, FollowFinished},
		{"followed, larger", old(MethodCopy, 300, false, true), file(30, 400, true), false, FollowFinished},
		{"link of the source", old(MethodLink, 100, false, false), file(20, 5000, false), true, FollowNone},
		{"link of another inode", old(MethodLink, 100, false, false), file(21, 100, false), false, FollowNone},
		{"rescued_to elsewhere", old(MethodCopy, 100, false, false), Found{Path: "/r/other", Ino: 30, Size: 100}, false, FollowNone},
		{"recorded, as claimed", recorded(old(MethodCopy, 100, false, false)), file(30, 100, false), true, FollowNone},
		{"recorded, another inode", recorded(old(MethodCopy, 100, false, false)), file(31, 100, false), false, FollowNone},
		{"recorded, grown but not following", recorded(old(MethodCopy, 100, false, false)), file(30, 200, true), false, FollowNone},
		{"recorded, following", recorded(old(MethodCopy, 100, true, false)), file(30, 200, true), true, FollowActive},
		{"recorded link", recorded(old(MethodLink, 100, false, false)), file(20, 7, false), true, FollowNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.s.Verify(tc.f)
			if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrSidecar) {
				t.Errorf("Verify: %v, want ok %v", err, tc.ok)
			}
			if got := tc.s.FollowState(tc.f); got != tc.follow {
				t.Errorf("FollowState = %q, want %q", got, tc.follow)
			}
		})
	}
}
