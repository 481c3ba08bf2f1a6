// Package mounts is relinkd's knowledge of the host's filesystems: the
// mount tables (mountinfo(5)), how relinkd reaches the host's paths from
// its own mount namespace (Host.Via), where a deleted file can be rescued
// on the same filesystem (Host.Locate), free space (statfs(2)), the
// safety checks of a rescue root, and which mounts the watch rules cover.
package mounts

import (
	"path"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/pkg/config"
)

// Host is the host's mounts as relinkd reaches them, for the rescue
// settings of one configuration. It is safe for concurrent use: every
// method reads the mount tables afresh, and only probes (KnownRoots'
// looks, which outlive a reload) is shared state, guarded by its own lock.
type Host struct {
	rc       *config.RescueConfig
	log      *zap.Logger
	proc     procfs.FS
	view     hostView
	hostRoot string // WithHostRoot's directory ("" when not given)
	probes   *probes
}

// Option configures a Host.
type Option func(*Host)

// WithProcRoot makes the host read procfs at root ("" means /proc): the
// holders' mount tables and roots, and PID 1's mount namespace (hostView).
func WithProcRoot(root string) Option {
	return func(h *Host) { h.proc = procfs.New(root) }
}

// WithHostRoot puts relinkd in container mode (relinkd --host-root):
// the host's root is the directory dir of relinkd's own view, and its
// mounts are relinkd's mounts below dir (see hostView). "" or "/" leave
// the host view to be found as usual. Give WithProcRoot first when the
// proc root is not /proc.
func WithHostRoot(dir string) Option {
	return func(h *Host) { h.hostRoot = path.Clean(dir) }
}

// New returns the host's mounts for the rescue settings rc (rescue.dirs,
// fs_dir, cross_fs, containers, container_dir), which Locate and
// KnownRoots go by. The host view is found now.
func New(rc *config.RescueConfig, log *zap.Logger, opts ...Option) *Host {
	h := &Host{rc: rc, log: log, probes: newProbes()}
	for _, o := range opts {
		o(h)
	}
	if h.hostRoot != "" && h.hostRoot != "/" && h.hostRoot != "." {
		h.view = containerView(h.proc, h.hostRoot)
	} else {
		h.view = findHostView(h.proc)
	}
	return h
}

// Inherit shares old's looks at rescue roots (KnownRoots) with h, so that
// a look still blocked on a hung filesystem is not started again after a
// configuration reload. Call it before h is used.
func (h *Host) Inherit(old *Host) {
	if old != nil && old != h {
		h.probes = old.probes
	}
}

// Via is the prefix through which relinkd reaches the host paths that
// Locate and KnownRoots return: "" when its mount namespace is the
// host's, the host root of container mode (WithHostRoot), else
// /proc/1/root (see hostView).
func (h *Host) Via() string { return h.view.via }

// Mounts returns the host's mount table (see Via).
func (h *Host) Mounts() ([]Mount, error) { return h.view.mounts() }

// FreeSpace is FreeSpace of a host path (see Via).
func (h *Host) FreeSpace(root string) (avail, total uint64, err error) {
	return freeSpace(h.view.via, root)
}

// Room is FreeSpace of l.Root, reached through l.Via.
func (h *Host) Room(l Location) (avail, total uint64, err error) { return freeSpace(l.Via, l.Root) }

// Describe says where relinkd reaches the host's paths, for doctor.
func (h *Host) Describe() string {
	switch {
	case h.view.under != "":
		return h.view.via + " (--host-root: the host's root is mounted there; rescue roots are reached through it)"
	case h.view.via != "":
		return h.view.via + " (relinkd's mount namespace is not PID 1's: rescue roots are reached in the host's)"
	case h.view.note != "":
		return "/ (" + h.view.note + ")"
	}
	return "/ (relinkd's mount namespace is the host's)"
}
