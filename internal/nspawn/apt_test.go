package nspawn

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestMirrorParsers(t *testing.T) {
	tests := []struct {
		name  string
		parse func([]byte, string) []string
		data  string
		want  []string
	}{
		{
			name:  "one-line",
			parse: listMirrors,
			data: "# comment\n" +
				"deb-src http://src.example/debian bookworm main\n" +
				"deb [arch=amd64 signed-by=/k.gpg] http://a.example/debian bookworm main # trailing\n" +
				"deb http://b.example/debian bookworm-updates main\n" +
				"deb http://c.example/debian bookworm main contrib\n",
			want: []string{"http://a.example/debian", "http://c.example/debian"},
		},
		{
			name:  "one-line options with spaces",
			parse: listMirrors,
			data:  "deb [ arch=amd64 trusted=yes ] http://a.example/debian bookworm main\n",
			want:  []string{"http://a.example/debian"},
		},
		{
			name:  "deb822",
			parse: deb822Mirrors,
			data: "Types: deb\n" +
				"# http://snapshot.example/archive/debian/20250520T000000Z\n" +
				"URIs: http://deb.example/debian\n" +
				"Suites: bookworm bookworm-updates\n" +
				"Components: main\n" +
				"Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n" +
				"\n" +
				"Types: deb\n" +
				"URIs: http://security.example/debian-security\n" +
				"Suites: bookworm-security\n" +
				"Components: main\n",
			want: []string{"http://deb.example/debian"},
		},
		{
			name:  "deb822 disabled, source-only and continuation lines",
			parse: deb822Mirrors,
			data: "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n" +
				"Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n" +
				"Types: deb\nURIs: http://on.example/debian\nSuites: bookworm\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n",
			want: []string{"http://on.example/debian"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.parse([]byte(tt.data), "bookworm"); !slices.Equal(got, tt.want) {
				t.Errorf("-want %q +got %q", tt.want, got)
			}
		})
	}
}

func TestAptMirror(t *testing.T) {
	dir := t.TempDir()
	d := filepath.Join(dir, "sources.list.d")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"a.list.disabled-by-farm": "deb http://disabled.example/debian bookworm main\n",
		"b.sources":               "Types: deb\nURIs: http://b.example/debian\nSuites: bookworm\nComponents: main\n",
		"c.list":                  "deb http://c.example/debian bookworm main\n",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(d, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := AptMirror(dir, "bookworm")
	if err != nil || got != "http://b.example/debian" {
		t.Errorf("AptMirror = %q, %v; want http://b.example/debian", got, err)
	}
	if got, err := AptMirror(dir, "trixie"); err == nil {
		t.Errorf("AptMirror(trixie) = %q, want an error", got)
	}
}
