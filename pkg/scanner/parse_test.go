package scanner

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"reflect"
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

func TestParseFDInfo(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    fdInfo
		wantErr bool
	}{
		{"regular", "pos:\t42\nflags:\t0100002\nmnt_id:\t27\nino:\t99\n", fdInfo{Pos: 42, Flags: 0o100002, MntID: 27}, false},
		{"tmpfile", "pos:\t0\nflags:\t022300002\nmnt_id:\t31\nino:\t5\n", fdInfo{Flags: 0o22300002, MntID: 31}, false},
		{"extra lines", "pos:\t1\nflags:\t02\nmnt_id:\t3\nino:\t4\ninotify wd:1 ino:2\n", fdInfo{Pos: 1, Flags: 2, MntID: 3}, false},
		{"no mnt_id", "pos:\t1\nflags:\t02\n", fdInfo{}, true},
		{"bad flags", "pos:\t1\nflags:\t09\nmnt_id:\t3\n", fdInfo{}, true},
		{"bad pos", "pos:\tx\nflags:\t02\nmnt_id:\t3\n", fdInfo{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseFDInfo([]byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err != nil && !errors.Is(err, ErrParse) {
				t.Errorf("err %v does not wrap ErrParse", err)
			}
			if got != tc.want {
				t.Errorf("-want +got:\n-%+v\n+%+v", tc.want, got)
			}
		})
	}
}

func TestParseFDName(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		ok   bool
	}{{"0", 0, true}, {"1023", 1023, true}, {".", 0, false}, {"..", 0, false}, {"12a", 0, false}, {"", 0, false}, {"99999999999", 0, false}} {
		got, ok := parseFDName([]byte(tc.in))
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseFDName(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func dirent(name string) []byte {
	reclen := (19 + len(name) + 1 + 7) &^ 7
	b := make([]byte, reclen)
	binary.NativeEndian.PutUint64(b[0:], 1)
	binary.NativeEndian.PutUint16(b[16:], uint16(reclen))
	copy(b[19:], name)
	return b
}

func TestParseDirents(t *testing.T) {
	var buf []byte
	want := []string{".", "..", "0", "17", "1024"}
	for _, n := range want {
		buf = append(buf, dirent(n)...)
	}
	buf = append(buf, 1, 2, 3) // a torn tail is ignored
	var got []string
	parseDirents(buf, func(name []byte) { got = append(got, string(name)) })
	if !reflect.DeepEqual(got, want) {
		t.Errorf("-want +got:\n-%q\n+%q", want, got)
	}
}

func TestMountIDs(t *testing.T) {
	in := "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n27 22 0:25 / /tmp rw - tmpfs tmpfs rw\n"
	got := mountIDs([]byte(in))
	if want := map[int]bool{22: true, 27: true}; !reflect.DeepEqual(got, want) {
		t.Errorf("-want +got:\n-%v\n+%v", want, got)
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

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    procStat
		wantErr bool
	}{
		{"plain", "42 (sleep) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 12345 2285568 130 18446744073709551615", procStat{"sleep", 12345}, false},
		{"parens and spaces", "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0", procStat{"a) b (c)", 99}, false},
		{"short", "7 (x) R 1 2", procStat{}, true},
		{"no parens", "7 x R", procStat{}, true},
		{"bad starttime", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 zz 0", procStat{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("parseStat = %+v, %v; want %+v, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestParseStatusUID(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    uint32
		wantErr bool
	}{
		{"root", "Name:\tx\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n", 0, false},
		{"setuid", "Name:\tx\nUid:\t1000\t0\t0\t0\n", 1000, false},
		{"missing", "Name:\tx\n", 0, true},
		{"bad", "Uid:\tx\t0\n", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatusUID([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("parseStatusUID = %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}
