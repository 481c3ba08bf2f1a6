package scanner

import (
	"strings"
	"testing"
)

// The cgroup files below are as the runtimes write them: cgroup v2 (one
// "0::" line) and v1 (one line per hierarchy), systemd and cgroupfs drivers.
func TestParseContainerID(t *testing.T) {
	const (
		id  = "3f4c8a1e2b7d9c0a5e6f1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a"
		id2 = "b1d2c3e4f5a60718293a4b5c6d7e8f90a1b2c3d4e5f6a3f4c8a1e2b7d9c0a5e6"
	)
	v1 := func(path string) string {
		var b strings.Builder
		for i, ctl := range []string{"name=systemd", "pids", "memory", "cpu,cpuacct", "blkio", "devices", "freezer", "net_cls,net_prio", "cpuset"} {
			b.WriteString(strings.Join([]string{string(rune('0' + 12 - i)), ctl, path}, ":") + "\n")
		}
		return b.String()
	}
	for _, tc := range []struct {
		name, in, want string
	}{
		{"host v2", "0::/system.slice/cron.service\n", ""},
		{"host v1", v1("/user.slice/user-0.slice/session-3.scope") + "0::/user.slice/user-0.slice/session-3.scope\n", ""},
		{"root", "0::/\n", ""},
		{"docker systemd v2", "0::/system.slice/docker-" + id + ".scope\n", id},
		{"docker systemd v2, sub-cgroup", "0::/system.slice/docker-" + id + ".scope/init\n", id},
		{"docker cgroupfs v1", v1("/docker/" + id), id},
		{"docker cgroupfs v2", "0::/docker/" + id + "\n", id},
		{"docker in docker", "0::/docker/" + id + "/docker/" + id2 + "\n", id2},
		{"docker hybrid, v2 line empty", v1("/docker/"+id) + "0::/\n", id},
		{"docker short id", "0::/docker/3f4c8a1e2b7d\n", ""},
		{"docker uppercase", "0::/docker/" + strings.ToUpper(id) + "\n", ""},
		{"hex not under docker", "0::/system.slice/" + id + "\n", ""},
		{"cri-containerd systemd", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-" + id + ".scope\n", id},
		{"kubepods cgroupfs v1", v1("/kubepods/burstable/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/" + id), id},
		{"kubepods guaranteed", "0::/kubepods/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/" + id + "\n", id},
		{"kind node: kubepods in docker", "0::/docker/" + id + "/kubepods/besteffort/pod0f1e/" + id2 + "\n", id2},
		{"pod cgroup itself", "0::/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n", ""},
		{"crio", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e.slice/crio-" + id + ".scope\n", id},
		{"crio conmon", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e.slice/crio-conmon-" + id + ".scope\n", ""},
		{"podman", "0::/machine.slice/libpod-" + id + ".scope/container\n", id},
		{"podman rootless", "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + id + ".scope\n", id},
		{"podman conmon", "0::/machine.slice/libpod-conmon-" + id + ".scope\n", ""},
		{"podman cgroupfs", v1("/libpod_parent/libpod-" + id), id},
		{"nspawn", "0::/machine.slice/machine-web.scope/payload\n", "web"},
		{"nspawn escaped", "0::/machine.slice/machine-web\\x2d1.scope/payload/system.slice/nginx.service\n", "web-1"},
		{"nspawn v1", v1("/machine.slice/machine-db\\x2dprimary.scope"), "db-primary"},
		{"nspawn running docker", "0::/machine.slice/machine-ci.scope/payload/system.slice/docker-" + id + ".scope\n", id},
		{"nspawn name with slash escaped", "0::/machine.slice/machine-a\\x2fb.scope\n", ""},
		{"nspawn name dot-dot", "0::/machine.slice/machine-...scope\n", ""},
		{"machine scope elsewhere", "0::/system.slice/machine-web.scope\n", ""},
		{"garbage", "nonsense\n::\n", ""},
		{"empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseContainerID([]byte(tc.in)); got != tc.want {
				t.Errorf("parseContainerID(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestUnescapeUnit(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`web\x2d1`, "web-1"},
		{`a\x2db\x2dc`, "a-b-c"},
		{`plain`, "plain"},
		{`bad\xzz`, `bad\xzz`},
		{`short\x2`, `short\x2`},
		{`end\x2d`, "end-"},
	} {
		if got := unescapeUnit([]byte(tc.in)); got != tc.want {
			t.Errorf("unescapeUnit(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
