package relink

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/relinkd/relinkd/internal/layout"
)

// TestParseSidecar: a sidecar is believed only when it parses, is small,
// names a method and both inodes, and matches the file beside it.
func TestParseSidecar(t *testing.T) {
	rule := "logs"
	good := Sidecar{Path: "/var/log/a", RescuedTo: "/r/var/log/a.x", Method: MethodCopy, Bytes: 10, Rule: &rule,
		Dev: 5, Ino: 7, BirthTime: 1, RescuedDev: 5, RescuedIno: 9, RescuedBirthTime: 3}
	enc := func(s Sidecar) []byte {
		b, err := json.Marshal(s)
		must(t, err)
		return b
	}
	for _, tt := range []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"good", enc(good), true},
		{"not json", []byte("{"), false},
		{"unknown method", enc(func() Sidecar { s := good; s.Method = "move"; return s }()), false},
		{"no rescued inode (an older sidecar)", enc(func() Sidecar { s := good; s.RescuedIno = 0; return s }()), false},
		{"too large", append(enc(good), make([]byte, layout.MaxSidecarSize)...), false},
	} {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			s, err := ParseSidecar(tt.b)
			if tt.ok != (err == nil) || err != nil && !errors.Is(err, ErrSidecar) {
				t.Fatalf("ok %v: got %v", tt.ok, err)
			}
			if tt.ok && (s.Ino != 7 || *s.Rule != "logs") {
				t.Errorf("decoded %+v", s)
			}
		})
	}

	link := good
	link.Method, link.RescuedIno, link.RescuedBirthTime = MethodLink, good.Ino, good.BirthTime
	following := good
	following.Following = true
	noBirth := good
	noBirth.RescuedBirthTime = 0
	for _, tt := range []struct {
		name        string
		s           Sidecar
		dev, ino    uint64
		size, btime int64
		ok          bool
	}{
		{"copy as written", good, 5, 9, 10, 3, true},
		{"copy of another inode", good, 5, 8, 10, 3, false},
		{"copy on another device", good, 6, 9, 10, 3, false},
		{"copy replaced by a file with its inode number", good, 5, 9, 10, 4, false},
		{"copy on a filesystem without birth times", noBirth, 5, 9, 10, 0, true},
		{"copy that grew", good, 5, 9, 11, 3, false},
		{"copy that shrank", good, 5, 9, 9, 3, false},
		{"followed copy that grew", following, 5, 9, 11, 3, true},
		{"followed copy that shrank", following, 5, 9, 9, 3, false},
		{"link, any size", link, 5, 7, 1 << 20, 1, true},
		{"link that is not the source", func() Sidecar { s := link; s.RescuedIno = 8; return s }(), 5, 8, 10, 1, false},
	} {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			err := tt.s.Describes(tt.dev, tt.ino, tt.size, tt.btime)
			if tt.ok != (err == nil) || err != nil && !errors.Is(err, ErrSidecar) {
				t.Errorf("ok %v: got %v", tt.ok, err)
			}
		})
	}
}
