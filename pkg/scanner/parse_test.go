package scanner

import (
	"encoding/base64"
	"encoding/json"
	"testing"
)

func TestTrimDeleted(t *testing.T) {
	for _, tc := range []struct {
		name, link, want string
		deleted          bool
	}{
		{"deleted", "/var/log/app.log (deleted)", "/var/log/app.log", true},
		{"live", "/var/log/app.log", "/var/log/app.log", false},
		{"pipe", "pipe:[1234]", "pipe:[1234]", false},
		{"anon", "anon_inode:[eventfd] (deleted)", "anon_inode:[eventfd] (deleted)", false},
		{"twice", "/x (deleted) (deleted)", "/x (deleted)", true},
		{"newline", "/a\nb (deleted)", "/a\nb", true},
		{"empty", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, del := trimDeleted([]byte(tc.link))
			if string(got) != tc.want || del != tc.deleted {
				t.Errorf("trimDeleted(%q) = %q, %v; want %q, %v", tc.link, got, del, tc.want, tc.deleted)
			}
		})
	}
}

func TestRecordPathEncoding(t *testing.T) {
	for _, tc := range []struct {
		name     string
		path     []byte
		wantPath string
		wantB64  bool
	}{
		{"ascii", []byte("/var/log/a.log"), "/var/log/a.log", false},
		{"newline", []byte("/tmp/a\nb"), "/tmp/a\nb", false},
		{"utf8", []byte("/tmp/żółw"), "/tmp/żółw", false},
		{"invalid", []byte("/tmp/\xff\xfeend"), "/tmp/\ufffd\ufffdend", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Candidate{Path: tc.path}
			b, err := json.Marshal(c.Record("logs"))
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("invalid JSON %s: %v", b, err)
			}
			if got["path"] != tc.wantPath {
				t.Errorf("path = %q, want %q", got["path"], tc.wantPath)
			}
			if got["rule"] != "logs" {
				t.Errorf("rule = %v", got["rule"])
			}
			b64, has := got["path_base64"].(string)
			if has != tc.wantB64 {
				t.Fatalf("path_base64 present = %v, want %v", has, tc.wantB64)
			}
			if has {
				raw, err := base64.StdEncoding.DecodeString(b64)
				if err != nil || string(raw) != string(tc.path) {
					t.Errorf("path_base64 decodes to %q (%v), want %q", raw, err, tc.path)
				}
			}
		})
	}
	var c Candidate
	b, _ := json.Marshal(c)
	var got map[string]any
	_ = json.Unmarshal(b, &got)
	if v, ok := got["rule"]; !ok || v != nil {
		t.Errorf("rule without a match = %v (present %v), want null", v, ok)
	}
}
