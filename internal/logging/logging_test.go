package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// A burst of identical rescue events must all reach the log: the product is
// queried through them, so nothing may be sampled away.
func TestNoSampling(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	const n = 5000
	for i := 0; i < n; i++ {
		log.Info("file rescued")
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != n {
		t.Fatalf("got %d lines, want %d", len(lines), n)
	}
	var ev map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &ev); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ts", "level", "msg"} {
		if _, ok := ev[k]; !ok {
			t.Errorf("event lacks %q: %s", k, lines[0])
		}
	}
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct{ name, level, format string }{
		{"level", "loud", "json"},
		{"format", "info", "xml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(&bytes.Buffer{}, tc.level, tc.format); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

func TestPath(t *testing.T) {
	for _, tc := range []struct {
		name, in, want, wantB64 string
	}{
		{"utf8", "/var/log/a\nb.log", "/var/log/a\nb.log", ""},
		{"invalid", "/tmp/\xffx", "/tmp/\ufffdx", "L3RtcC//eA=="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log, _ := New(&buf, "info", "json")
			log.Info("file rescued", Path("path", []byte(tc.in)))
			var ev map[string]any
			if err := json.Unmarshal(buf.Bytes(), &ev); err != nil {
				t.Fatalf("%s: %v", buf.Bytes(), err)
			}
			if ev["path"] != tc.want {
				t.Errorf("path = %q, want %q", ev["path"], tc.want)
			}
			got, _ := ev["path_base64"].(string)
			if got != tc.wantB64 {
				t.Errorf("path_base64 = %q, want %q", got, tc.wantB64)
			}
		})
	}
}

// TestName: valid names pass as they are; others get U+FFFD for each bad
// byte and their exact bytes in base64, which NameBytes gives back.
func TestName(t *testing.T) {
	for _, name := range [][]byte{[]byte("/var/log/app.log"), []byte("/x/\xff\xfe y"), []byte("a\nb"), {}} {
		text, b64 := Name(name)
		if utf8.Valid(name) != (b64 == "") || !utf8.ValidString(text) {
			t.Errorf("Name(%q) = %q, %q", name, text, b64)
		}
		back, err := NameBytes(text, b64)
		if err != nil || string(back) != string(name) {
			t.Errorf("NameBytes(Name(%q)) = %q, %v", name, back, err)
		}
	}
}
