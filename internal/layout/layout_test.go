package layout

import "testing"

func TestIsTemp(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{".app.log.relinkd-tmp-0a1b2c3d4e5f", true},
		{".relinkd-tmp-0a1b2c3d4e5f", true},
		{"app.log.relinkd-tmp-0a1b2c3d4e5f", false}, // not hidden: a rescued file's own name
		{"app.log.20261121T203000Z.pid1.fd3", false},
		{"app.log" + SidecarSuffix, false},
	} {
		if got := IsTemp(tc.name); got != tc.want {
			t.Errorf("IsTemp(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
