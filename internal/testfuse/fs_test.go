package testfuse

import (
	"slices"
	"testing"
)

// TestReaddirLayout checks the dirent records: names padded to 8 bytes,
// each off naming the next entry, and no record cut by the size limit.
func TestReaddirLayout(t *testing.T) {
	f := newFS(false)
	for _, name := range []string{"b", "a-longer-name"} {
		if _, errno := f.create(f.nodes[rootID], inHeader{}, name, 0o100644); errno != 0 {
			t.Fatalf("create %s: %v", name, errno)
		}
	}
	tests := []struct {
		name   string
		offset uint64
		size   uint32
		want   []string
	}{
		{"all", 0, 4096, []string{".", "..", "a-longer-name", "b"}},
		{"from the third", 2, 4096, []string{"a-longer-name", "b"}},
		{"two fit", 0, 64, []string{".", ".."}},
		{"no record cut", 0, 63, []string{"."}},
		{"past the end", 4, 4096, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := f.readdir(f.nodes[rootID], readIn{Offset: tc.offset, Size: tc.size})
			var got []string
			next := tc.offset
			for len(b) > 0 {
				var d direntHeader
				rest, err := decode(b, &d)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, string(rest[:d.Namelen]))
				next++
				if d.Off != next {
					t.Errorf("%q: off %d, want %d", got[len(got)-1], d.Off, next)
				}
				b = b[(24+int(d.Namelen)+7)&^7:]
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("names -want +got:\n-%q\n+%q", tc.want, got)
			}
		})
	}
}
