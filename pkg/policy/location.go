package policy

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/pkg/scanner"
)

// Where a rescue location came from.
const (
	KindDir     = "dir"      // a configured rescue directory
	KindFSDir   = "fs_dir"   // the per-filesystem directory at a mount's root
	KindCrossFS = "cross_fs" // a configured directory on another filesystem (copy only)
)

// Location is where a deleted file can be rescued.
type Location struct {
	Root string // rescue root directory, a path in the daemon's mount namespace
	Kind string // KindDir, KindFSDir or KindCrossFS
	// SameMount is set when Root is on the very mount (vfsmount) the holder
	// opened the file through: only then can linkat(2) work (EXDEV otherwise).
	SameMount bool
	// SameFS is set when Root is on the same filesystem (superblock): FICLONE
	// works across mounts of one filesystem since Linux 5.18.
	SameFS bool
	// FSType is the type of the file's filesystem ("" when unknown).
	FSType string
}

// ErrNoLocation is returned when no rescue location is allowed for a file.
var ErrNoLocation = errors.New("no rescue location")

// fileMount is the file's mount as far as it can be known.
type fileMount struct {
	m      *Mount // the mount, from the holder's or the host's table
	sameNS bool   // m.ID and m.MountPoint are valid in our namespace
}

// resolveMount finds the mount of c: through its mnt_id in the holder's
// mountinfo (proc(5)), which is the host table when the holder shares our
// mount namespace. When the id is unknown it falls back to a host mount of
// the same device number.
func (p *Policy) resolveMount(c *scanner.Candidate, host []Mount) (fileMount, error) {
	pid := strconv.Itoa(c.PID)
	self, err1 := mountNS(p.procRoot, "self")
	theirs, err2 := mountNS(p.procRoot, pid)
	same := err1 == nil && err2 == nil && self == theirs
	if c.MntID != 0 {
		if same {
			if m := byID(host, c.MntID); m != nil {
				return fileMount{m: m, sameNS: true}, nil
			}
		} else if err2 == nil {
			if ms, err := ReadMountInfo(filepath.Join(p.procRoot, pid, "mountinfo")); err == nil {
				if m := byID(ms, c.MntID); m != nil {
					return fileMount{m: m}, nil
				}
			}
		}
	}
	// Fallback by device. For btrfs subvolumes st_dev differs from the
	// superblock's device shown in mountinfo, so this may find nothing.
	maj, mnr := unix.Major(c.Dev), unix.Minor(c.Dev)
	var best *Mount
	for i := range host {
		m := &host[i]
		if m.Major == maj && m.Minor == mnr && (best == nil || len(m.Root) < len(best.Root)) {
			best = m
		}
	}
	if best == nil {
		return fileMount{}, fmt.Errorf("mount of pid %d fd %d (mnt_id %d, dev %d:%d): %w", c.PID, c.FD, c.MntID, maj, mnr, ErrNoLocation)
	}
	return fileMount{m: best}, nil
}

func sameSuper(a, b *Mount) bool { return a.Major == b.Major && a.Minor == b.Minor }

// Locate chooses where c would be rescued: the first configured rescue
// directory on the file's filesystem (preferring a path through the file's
// own mount, so that link works); else the per-filesystem directory at the
// root of the file's mount; else, if cross_fs allows, the first writable
// configured directory. It returns ErrNoLocation when none is allowed.
func (p *Policy) Locate(c *scanner.Candidate) (Location, error) {
	host, err := ReadMountInfo(filepath.Join(p.procRoot, "self", "mountinfo"))
	if err != nil {
		return Location{}, err
	}
	fm, ferr := p.resolveMount(c, host)
	if ferr == nil {
		if loc, ok := p.locateSameFS(fm, host); ok {
			return loc, nil
		}
	}
	if p.cfg.Rescue.CrossFS {
		for _, d := range p.cfg.Rescue.Dirs {
			id, _, _, err := pathMount(d)
			if err != nil {
				continue
			}
			if dm := byID(host, id); dm != nil && !dm.ReadOnly() && p.safeRoot(d) {
				loc := Location{Root: d, Kind: KindCrossFS}
				if fm.m != nil {
					loc.FSType = fm.m.FSType
				}
				return loc, nil
			}
		}
	}
	if ferr != nil {
		return Location{}, ferr
	}
	return Location{FSType: fm.m.FSType}, fmt.Errorf("pid %d fd %d on %s (%s): no rescue directory on this filesystem, fs_dir %q, cross_fs %v: %w",
		c.PID, c.FD, fm.m.MountPoint, fm.m.FSType, p.cfg.Rescue.FSDir, p.cfg.Rescue.CrossFS, ErrNoLocation)
}

func (p *Policy) locateSameFS(fm fileMount, host []Mount) (Location, bool) {
	cm := fm.m
	for _, d := range p.cfg.Rescue.Dirs {
		id, _, _, err := pathMount(d)
		if err != nil {
			p.log.Debug("rescue dir not usable", zap.String("dir", d), zap.Error(err))
			continue
		}
		dm := byID(host, id)
		if dm == nil || !sameSuper(dm, cm) || dm.ReadOnly() {
			continue
		}
		if err := checkRoot(d); err != nil {
			p.log.Warn("rescue dir refused", zap.String("dir", d), zap.Error(err))
			continue
		}
		loc := Location{Root: d, Kind: KindDir, SameFS: true, FSType: cm.FSType}
		if fm.sameNS {
			if dm.ID == cm.ID {
				loc.SameMount = true
				return loc, true
			}
			// The same directory may be reachable through the file's own
			// mount (a bind mount of a parent): then link works there.
			fsPath := filepath.Join(dm.Root, relTo(filepath.Clean(d), dm.MountPoint))
			if isUnder(fsPath, cm.Root) {
				alt := filepath.Join(cm.MountPoint, relTo(fsPath, cm.Root))
				if aid, _, _, err := pathMount(alt); err == nil && aid == cm.ID {
					loc.Root, loc.SameMount = alt, true
				}
			}
		}
		return loc, true
	}
	if p.cfg.Rescue.FSDir == "" {
		return Location{}, false
	}
	if fm.sameNS && !cm.ReadOnly() {
		root := filepath.Join(cm.MountPoint, p.cfg.Rescue.FSDir)
		if id, _, _, err := pathMount(root); err == nil && id == cm.ID && p.safeRoot(root) {
			return Location{Root: root, Kind: KindFSDir, SameMount: true, SameFS: true, FSType: cm.FSType}, true
		}
	}
	// The holder is in another mount namespace (a container), or its mount
	// is hidden: use the root of the same filesystem as the host mounts it.
	// This keeps the rescued data out of the container's view, and link is
	// impossible anyway across vfsmounts.
	var best *Mount
	for i := range host {
		m := &host[i]
		if sameSuper(m, cm) && !m.ReadOnly() && (best == nil || len(m.Root) < len(best.Root)) {
			best = m
		}
	}
	if best == nil {
		return Location{}, false
	}
	root := filepath.Join(best.MountPoint, p.cfg.Rescue.FSDir)
	if id, _, _, err := pathMount(root); err != nil || id != best.ID || !p.safeRoot(root) {
		return Location{}, false
	}
	return Location{Root: root, Kind: KindFSDir, SameFS: true, FSType: cm.FSType}, true
}

// safeRoot reports whether root passes checkRoot, logging why not.
func (p *Policy) safeRoot(root string) bool {
	if err := checkRoot(root); err != nil {
		p.log.Warn("rescue dir refused", zap.String("dir", root), zap.Error(err))
		return false
	}
	return true
}
