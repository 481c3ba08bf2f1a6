package procfs

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
)

func TestParseFDInfo(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    FDInfo
		wantErr bool
	}{
		{"regular", "pos:\t42\nflags:\t0100002\nmnt_id:\t27\nino:\t99\n", FDInfo{Pos: 42, Flags: 0o100002, MntID: 27}, false},
		{"tmpfile", "pos:\t0\nflags:\t022300002\nmnt_id:\t31\nino:\t5\n", FDInfo{Flags: 0o22300002, MntID: 31}, false},
		{"extra lines", "pos:\t1\nflags:\t02\nmnt_id:\t3\nino:\t4\ninotify wd:1 ino:2\n", FDInfo{Pos: 1, Flags: 2, MntID: 3}, false},
		{"cloexec", "pos:\t0\nflags:\t02100002\nmnt_id:\t31\nino:\t12\n", FDInfo{Flags: 0o2100002, MntID: 31}, false},
		{"no mnt_id", "pos:\t1\nflags:\t02\n", FDInfo{}, true},
		{"no flags", "pos:\t0\n", FDInfo{}, true},
		{"bad flags", "pos:\t1\nflags:\t09\nmnt_id:\t3\n", FDInfo{}, true},
		{"bad pos", "pos:\tx\nflags:\t02\nmnt_id:\t3\n", FDInfo{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFDInfo([]byte(tc.in))
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

func TestParseID(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		ok   bool
	}{{"0", 0, true}, {"1023", 1023, true}, {".", 0, false}, {"..", 0, false}, {"12a", 0, false}, {"", 0, false}, {"99999999999", 0, false}} {
		got, ok := ParseID([]byte(tc.in))
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseID(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
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
	ParseDirents(buf, func(name []byte) { got = append(got, string(name)) })
	if !reflect.DeepEqual(got, want) {
		t.Errorf("-want +got:\n-%q\n+%q", want, got)
	}
}

func TestMountIDs(t *testing.T) {
	in := "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n27 22 0:25 / /tmp rw - tmpfs tmpfs rw\n"
	got := MountIDs([]byte(in))
	if want := map[int]bool{22: true, 27: true}; !reflect.DeepEqual(got, want) {
		t.Errorf("-want +got:\n-%v\n+%v", want, got)
	}
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    Stat
		wantErr bool
	}{
		{"plain", "42 (sleep) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 12345 2285568 130 18446744073709551615", Stat{"sleep", 12345}, false},
		{"parens and spaces", "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0", Stat{"a) b (c)", 99}, false},
		{"comm with ') ('", "4242 (a) b) (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n", Stat{"a) b) (c", 987654}, false},
		{"short", "7 (x) R 1 2", Stat{}, true},
		{"no parens", "7 x R", Stat{}, true},
		{"bad starttime", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 zz 0", Stat{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseStat([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("ParseStat = %+v, %v; want %+v, error %v", got, err, tc.want, tc.wantErr)
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
			got, err := ParseStatusUID([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("ParseStatusUID = %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}
func TestParseNSLink(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     uint64
		wantErr  bool
	}{
		{"host", "mnt:[4026531841]", 4026531841, false},
		{"container", "mnt:[4026532289]", 4026532289, false},
		{"other namespace type", "net:[4026531840]", 0, true},
		{"no bracket", "mnt:4026531841", 0, true},
		{"not a number", "mnt:[x]", 0, true},
		{"zero", "mnt:[0]", 0, true},
		{"empty", "", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseNSLink([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("ParseNSLink(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
			}
			if err != nil && !errors.Is(err, ErrParse) {
				t.Errorf("err %v does not wrap ErrParse", err)
			}
		})
	}
}

func TestParseStatusNSpidDepth(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int
	}{
		{"initial namespace", "Name:\tx\nNSpid:\t42\nNSpgid:\t42\n", 1},
		{"container", "NSpid:\t4242\t7\n", 2},
		{"nested", "NSpid:\t9\t8\t1\n", 3},
		{"no line", "Name:\tx\nPid:\t1\n", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ParseStatusNSpidDepth([]byte(tt.in)); got != tt.want {
				t.Errorf("ParseStatusNSpidDepth(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
}

func TestParsePIDNSLink(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     uint64
		wantErr  bool
	}{
		{"initial", "pid:[4026531836]", 4026531836, false},
		{"container", "pid:[4026532290]", 4026532290, false},
		{"mount namespace", "mnt:[4026531841]", 0, true},
		{"not a number", "pid:[x]", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePIDNSLink([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("ParsePIDNSLink(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
			}
		})
	}
}
