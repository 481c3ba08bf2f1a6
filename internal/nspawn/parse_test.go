package nspawn

import (
	"slices"
	"testing"
)

func TestCgroupDirs(t *testing.T) {
	const hybrid = `22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 30 0:28 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	const unified = `22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
`
	tests := []struct {
		name              string
		mountinfo, cgroup string
		want              []string
	}{
		{
			name:      "hybrid, in the root cgroup",
			mountinfo: hybrid,
			cgroup:    "9:name=systemd:/\n4:memory:/job/42\n0::/\n",
			want:      []string{"/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"},
		},
		{
			name:      "unified, in a scope",
			mountinfo: unified,
			cgroup:    "0::/user.slice/session-1.scope\n",
			want:      []string{"/sys/fs/cgroup/user.slice/session-1.scope"},
		},
		{
			name:      "legacy without a unified hierarchy",
			mountinfo: "32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n",
			cgroup:    "1:name=systemd:/ci\n",
			want:      []string{"/sys/fs/cgroup/systemd/ci"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cgroupDirs([]byte(tt.mountinfo), []byte(tt.cgroup)); !slices.Equal(got, tt.want) {
				t.Errorf("-want %q +got %q", tt.want, got)
			}
		})
	}
}

func TestParseEntry(t *testing.T) {
	tests := []struct {
		name string
		line string
		want Entry
	}{
		{
			name: "text",
			line: `{"MESSAGE":"{\"msg\":\"relinkd started\"}","_PID":"67","__CURSOR":"s=1"}`,
			want: Entry{"MESSAGE": `{"msg":"relinkd started"}`, "_PID": "67", "__CURSOR": "s=1"},
		},
		{
			name: "bytes that are not UTF-8",
			line: `{"MESSAGE":[97,255,98],"_PID":"1"}`,
			want: Entry{"MESSAGE": "a\xffb", "_PID": "1"},
		},
		{
			name: "a field logged twice, and a field too large (null)",
			line: `{"MESSAGE":"m","X":["first","second"],"BIG":null}`,
			want: Entry{"MESSAGE": "m", "X": "second"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseEntry([]byte(tt.line))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Errorf("-want %q +got %q", tt.want, got)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s: -want %q +got %q", k, v, got[k])
				}
			}
		})
	}
	if _, err := parseEntry([]byte("not json")); err == nil {
		t.Error("parseEntry(not json) = nil error")
	}
}
