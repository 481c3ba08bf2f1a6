package policy

import (
	"path/filepath"
	"slices"
	"strings"

	"github.com/bmatcuk/doublestar/v4"
)

// pseudoFS are filesystem types that never hold user data worth rescuing.
var pseudoFS = []string{
	"proc", "sysfs", "cgroup", "cgroup2", "devpts", "devtmpfs", "mqueue", "debugfs", "tracefs",
	"securityfs", "pstore", "bpf", "configfs", "fusectl", "nsfs", "autofs", "binfmt_misc",
	"hugetlbfs", "rpc_pipefs", "efivarfs", "selinuxfs", "ramfs",
}

// CoveredMount is a mount that some watch rule's paths can reach.
type CoveredMount struct {
	Mount Mount
	Rules []string // names of the rules, in configuration order
}

// globPrefix returns the directory before the first glob metacharacter of
// g: "/var/log/**" → "/var/log", "/srv/*.log" → "/srv", "**/x" → "/".
func globPrefix(g string) string {
	i := strings.IndexAny(g, "*?[{\\")
	if i < 0 {
		return filepath.Dir(g)
	}
	p := g[:i]
	if j := strings.LastIndex(p, "/"); j >= 0 {
		p = p[:j]
	}
	if p == "" {
		return "/"
	}
	return filepath.Clean(p)
}

// CoveredMounts lists the mounts of host (the daemon's mountinfo) that the
// watch rules of cfg cover: the mount holding each glob's fixed prefix, and
// every mount below that prefix whose contents the glob can match. Pseudo
// filesystems (proc, sysfs, cgroup …) are left out.
func CoveredMounts(cfg *Config, host []Mount) []CoveredMount {
	var out []CoveredMount
	add := func(m *Mount, rule string) {
		if slices.Contains(pseudoFS, m.FSType) {
			return
		}
		for i := range out {
			if out[i].Mount.ID == m.ID {
				if !slices.Contains(out[i].Rules, rule) {
					out[i].Rules = append(out[i].Rules, rule)
				}
				return
			}
		}
		out = append(out, CoveredMount{Mount: *m, Rules: []string{rule}})
	}
	for _, r := range cfg.Watch {
		for _, g := range r.Paths {
			prefix := globPrefix(g)
			if id, _, _, err := pathMount(prefix); err == nil {
				if m := byID(host, id); m != nil {
					add(m, r.Name)
				}
			}
			for i := range host {
				m := &host[i]
				if !isUnder(m.MountPoint, prefix) {
					continue
				}
				in, _ := doublestar.Match(g, m.MountPoint+"/x")
				at, _ := doublestar.Match(g, m.MountPoint)
				if in || at {
					add(m, r.Name)
				}
			}
		}
	}
	slices.SortStableFunc(out, func(a, b CoveredMount) int { return strings.Compare(a.Mount.MountPoint, b.Mount.MountPoint) })
	return out
}
