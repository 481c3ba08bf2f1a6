package scanner

import (
	"bytes"
	"strconv"
)

// parseContainerID returns the container that /proc/PID/cgroup (cgroups(7):
// "hierarchy-ID:controllers:path" lines) names, or "" when it names none.
// The cgroup v2 line ("0::PATH") is read first, then the v1 lines in order;
// within a path the innermost component that names a container wins (a
// container inside an nspawn machine, Docker in Docker). Recognised:
//
//	Docker           /docker/<64 hex>            …/docker-<64 hex>.scope
//	containerd/CRI   …/cri-containerd-<64 hex>.scope   /kubepods…/pod<uid>/<64 hex>
//	CRI-O            …/crio-<64 hex>.scope
//	Podman           …/libpod-<64 hex>.scope     /libpod_parent/libpod-<64 hex>
//	systemd-nspawn   /machine.slice/machine-<name>.scope (name unescaped: \x2d is "-")
//
// The conmon monitors of CRI-O and Podman (crio-conmon-…, libpod-conmon-…)
// are host processes and are not containers. A cgroup name is not proof
// of anything (whoever may create cgroups, a user with a delegated subtree
// too, chooses it), so the result is only a label: it is checked to be a
// plain name (letters, digits, "-", "_", "."; see validName) because it
// names a directory under the container rescue root.
func parseContainerID(b []byte) string {
	var v1 [][]byte
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		id, rest, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		_, path, ok := bytes.Cut(rest, []byte{':'})
		if !ok {
			continue
		}
		if string(id) == "0" {
			if c := containerInPath(path); c != "" {
				return c
			}
			continue
		}
		v1 = append(v1, path)
	}
	for _, path := range v1 {
		if c := containerInPath(path); c != "" {
			return c
		}
	}
	return ""
}

// containerInPath returns the container named by the innermost matching
// component of one cgroup path, "" if none.
func containerInPath(path []byte) string {
	comps := bytes.Split(path, []byte{'/'})
	for i := len(comps) - 1; i >= 0; i-- {
		c := comps[i]
		if len(c) == 0 {
			continue
		}
		if id, ok := bytes.CutSuffix(c, []byte(".scope")); ok {
			for _, p := range [][]byte{[]byte("docker-"), []byte("cri-containerd-"), []byte("crio-"), []byte("libpod-")} {
				if h, ok := bytes.CutPrefix(id, p); ok && isHexID(h) {
					return string(h)
				}
			}
			if name, ok := bytes.CutPrefix(id, []byte("machine-")); ok && i > 0 && string(comps[i-1]) == "machine.slice" {
				if n := unescapeUnit(name); validName(n) {
					return n
				}
			}
			continue
		}
		if !isHexID(c) && !isLibpod(c) || i == 0 {
			continue
		}
		// cgroupfs drivers name the directory by the id alone, under a
		// parent that says whose it is.
		parent := string(comps[i-1])
		switch {
		case isLibpod(c) && parent == "libpod_parent":
			return string(c[len("libpod-"):])
		case isHexID(c) && parent == "docker":
			return string(c)
		case isHexID(c) && len(parent) > 3 && parent[:3] == "pod" && underKubepods(comps[:i-1]):
			return string(c)
		}
	}
	return ""
}

// underKubepods reports whether one of comps is kubelet's cgroup root
// ("kubepods", or "kubepods.slice" and its children with the systemd driver).
func underKubepods(comps [][]byte) bool {
	for _, c := range comps {
		if bytes.HasPrefix(c, []byte("kubepods")) {
			return true
		}
	}
	return false
}

func isLibpod(c []byte) bool {
	h, ok := bytes.CutPrefix(c, []byte("libpod-"))
	return ok && isHexID(h)
}

// isHexID reports whether b is a container id as the runtimes above make
// them: 64 lowercase hexadecimal digits (a SHA-256).
func isHexID(b []byte) bool {
	if len(b) != 64 {
		return false
	}
	for _, c := range b {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// unescapeUnit undoes systemd's unit name escaping (systemd.unit(5)):
// "\xNN" is the byte NN; machine "web-1" has the scope "machine-web\x2d1.scope".
func unescapeUnit(b []byte) string {
	var out []byte
	for i := 0; i < len(b); i++ {
		if b[i] == '\\' && i+3 < len(b) && b[i+1] == 'x' {
			if v, err := strconv.ParseUint(string(b[i+2:i+4]), 16, 8); err == nil {
				out = append(out, byte(v))
				i += 3
				continue
			}
		}
		out = append(out, b[i])
	}
	return string(out)
}

// validName reports whether s can name a directory as it is: 1 to 64
// letters, digits, "-", "_" or "." (not first), as machine names are
// (systemd's hostname rules).
func validName(s string) bool {
	if len(s) == 0 || len(s) > 64 || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}
