package mounts

import (
	"path/filepath"
	"slices"
	"strings"

	"github.com/bmatcuk/doublestar/v4"

	"github.com/relinkd/relinkd/pkg/config"
)

// pseudoFS are filesystem types that never hold user data worth rescuing.
var pseudoFS = []string{
	"proc", "sysfs", "cgroup", "cgroup2", "devpts", "devtmpfs", "mqueue", "debugfs", "tracefs",
	"securityfs", "pstore", "bpf", "configfs", "fusectl", "nsfs", "autofs", "binfmt_misc",
	"hugetlbfs", "rpc_pipefs", "efivarfs", "selinuxfs", "ramfs",
}

// Coverage is a mount that some watch rule's paths can reach.
type Coverage struct {
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

// containing returns the mount that path resolves to in host: the one with
// the longest mount point above it, the last of equals (an overmount
// hides what it covers). Symlinks in path are not followed.
func containing(host []Mount, path string) *Mount {
	var best *Mount
	for i := range host {
		m := &host[i]
		if isUnder(path, m.MountPoint) && (best == nil || len(m.MountPoint) >= len(best.MountPoint)) {
			best = m
		}
	}
	return best
}

// Covered lists the mounts of host (the daemon's mountinfo) that the
// watch rules of cfg cover: the mount holding each glob's fixed prefix, and
// every mount below that prefix whose contents the glob can match. Pseudo
// filesystems (proc, sysfs, cgroup …) are left out.
func Covered(cfg *config.Config, host []Mount) []Coverage {
	var out []Coverage
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
		out = append(out, Coverage{Mount: *m, Rules: []string{rule}})
	}
	for _, r := range cfg.Watch {
		for _, g := range r.Paths {
			prefix := globPrefix(g)
			if m := containing(host, prefix); m != nil {
				add(m, r.Name)
			}
			// A "**" after the prefix can reach into any mount below it.
			deep := strings.Contains(g, "**")
			for i := range host {
				m := &host[i]
				if !isUnder(m.MountPoint, prefix) || m.MountPoint == prefix {
					continue
				}
				in, _ := doublestar.Match(g, m.MountPoint+"/x")
				at, _ := doublestar.Match(g, m.MountPoint)
				if deep || in || at {
					add(m, r.Name)
				}
			}
		}
	}
	slices.SortStableFunc(out, func(a, b Coverage) int { return strings.Compare(a.Mount.MountPoint, b.Mount.MountPoint) })
	return out
}
