package mounts

import (
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/layout"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// Where a rescue location came from.
const (
	KindDir     = "dir"      // a configured rescue directory
	KindFSDir   = "fs_dir"   // the per-filesystem directory at a mount's root
	KindCrossFS = "cross_fs" // a configured directory on another filesystem (copy only)
	// KindContainer is rescue.container_dir, for a holder in a container.
	KindContainer = "container"
)

// Location is where a deleted file can be rescued.
type Location struct {
	// Root is the rescue root directory: a host path reached through Via,
	// or with Beneath a path in the holder's own view.
	Root string
	Kind string // KindDir, KindFSDir, KindCrossFS or KindContainer
	// Via is the prefix through which relinkd reaches Root: the host's
	// (see hostView), or the holder's root (/proc/PID/root) with Beneath.
	Via string
	// Beneath is set for a root inside a container's own filesystem
	// (rescue.containers: inside): the container controls every directory
	// on the way, so every component of Root is resolved below Via
	// without following symlinks (relink.Destination.Beneath). Such a
	// root counts against no max_total_size and is not pruned: it goes
	// with the container.
	Beneath bool
	// Prefix is the directory below Root that names the container
	// (ContainerName), for KindContainer; "" otherwise.
	Prefix string
	// SameMount is set when Root is on the very mount (vfsmount) the holder
	// opened the file through: only then can linkat(2) work (EXDEV otherwise).
	SameMount bool
	// SameFS is set when Root is on the same filesystem (superblock): FICLONE
	// works across mounts of one filesystem since Linux 5.18.
	SameFS bool
	// FSType is the type of the file's filesystem ("" when unknown).
	FSType string
}

// Rel returns where c goes below l.Root (see layout.RelName), under
// l.Prefix.
func (l Location) Rel(c *scanner.Candidate, now time.Time) string {
	if l.Prefix == "" {
		return layout.RelName(c, now)
	}
	return path.Join(l.Prefix, layout.RelName(c, now))
}

// ErrNoLocation is returned when no rescue location is allowed for a file.
var ErrNoLocation = errors.New("no rescue location")

// fileMount is the file's mount as far as it can be known.
type fileMount struct {
	m      *Mount // the mount, from the holder's or the host's table
	sameNS bool   // the holder is in the host's mount namespace: m is a host mount
}

// resolveMount finds the mount of c through its mnt_id (proc(5)). Mount
// ids are unique across namespaces, so an id in the host's table is a
// host mount, whether or not the holder is still alive to be asked (the
// pin keeps the file, not the process); otherwise the holder's mountinfo
// has it. When the id is unknown it falls back to a host mount of the same
// device number.
func (h *Host) resolveMount(c *scanner.Candidate, host []Mount) (fileMount, error) {
	if c.MntID != 0 {
		if m := byID(host, c.MntID); m != nil {
			return fileMount{m: m, sameNS: true}, nil
		}
		ms, err := h.proc.MountInfo(strconv.Itoa(c.PID))
		if err == nil {
			if m := byID(ms, c.MntID); m != nil {
				return fileMount{m: m}, nil
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
		return fileMount{}, fmt.Errorf("mount of pid %d fd %d (mnt_id %d, dev %d:%d) not found: %w", c.PID, c.FD, c.MntID, maj, mnr, ErrNoLocation)
	}
	return fileMount{m: best}, nil
}

func sameSuper(a, b *Mount) bool { return a.Major == b.Major && a.Minor == b.Minor }

// Locate chooses where c would be rescued: the first configured rescue
// directory on the file's filesystem (preferring a path through the file's
// own mount, so that link works); else the per-filesystem directory at the
// root of the file's mount; else, if cross_fs allows, the first writable
// configured directory. Paths are the host's (see hostView) and are read
// fresh each time, so a filesystem mounted after start-up is covered. A
// holder in a container (scanner.Candidate.InContainer) gets
// rescue.container_dir on the host instead (locateContainer), or with
// rescue.containers: inside the container's own fs_dir (locateInside). It
// returns ErrNoLocation, saying why each candidate root was refused, when
// none is allowed.
func (h *Host) Locate(c *scanner.Candidate) (Location, error) {
	host, err := h.view.mounts()
	if err != nil {
		return Location{}, err
	}
	var why []string
	fm, ferr := h.resolveMount(c, host)
	if c.InContainer() && h.rc.Containers != config.ContainersInside {
		return h.locateContainer(c, fm, host)
	}
	if ferr == nil {
		loc, ok, w := h.locateSameFS(c, fm, host)
		if ok {
			return loc, nil
		}
		why = w
	}
	if h.rc.CrossFS {
		for _, d := range h.rc.Dirs {
			id, _, _, err := pathMount(h.view.via, d)
			if err != nil {
				why = append(why, fmt.Sprintf("cross_fs %s: %v", d, err))
				continue
			}
			dm := byID(host, id)
			switch {
			case dm == nil:
				why = append(why, fmt.Sprintf("cross_fs %s: not on a host mount", d))
			case dm.ReadOnly():
				why = append(why, fmt.Sprintf("cross_fs %s: %s", d, h.readOnly(dm)))
			default:
				if err := CheckRoot(h.view.via, d); err != nil {
					why = append(why, err.Error())
					continue
				}
				loc := Location{Root: d, Via: h.view.via, Kind: KindCrossFS}
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
	if len(why) == 0 {
		why = append(why, fmt.Sprintf("no rescue.dirs entry on this filesystem, fs_dir %q, cross_fs %v", h.rc.FSDir, h.rc.CrossFS))
	}
	return Location{FSType: fm.m.FSType}, fmt.Errorf("pid %d fd %d on %s (%s): %s: %w",
		c.PID, c.FD, fm.m.MountPoint, fm.m.FSType, strings.Join(why, "; "), ErrNoLocation)
}

// readOnly says why m cannot take a rescue root.
func (h *Host) readOnly(m *Mount) string {
	s := fmt.Sprintf("%s is mounted read-only (%s)", m.MountPoint, m.Options)
	if h.view.note != "" {
		s += "; " + h.view.note
	}
	return s
}

// locateContainer places the file of c, held in a container, outside the
// container: below rescue.container_dir on the host, in a directory named
// after the container. The container's writable layer is removed with the
// container, so the file is copied onto another filesystem if need be,
// whatever cross_fs says; reflink is tried where container_dir is on the
// file's own filesystem (a volume bound in from the host). link never
// works: the host's mount is not the holder's vfsmount.
func (h *Host) locateContainer(c *scanner.Candidate, fm fileMount, host []Mount) (Location, error) {
	d := h.rc.ContainerDir
	fail := func(format string, args ...any) (Location, error) {
		return Location{}, fmt.Errorf("pid %d fd %d in container %s: rescue.container_dir %s: %s: %w",
			c.PID, c.FD, layout.ContainerName(c), d, fmt.Sprintf(format, args...), ErrNoLocation)
	}
	id, _, _, err := pathMount(h.view.via, d)
	if err != nil {
		return fail("%v", err)
	}
	dm := byID(host, id)
	switch {
	case dm == nil:
		return fail("not on a host mount")
	case dm.ReadOnly():
		return fail("%s", h.readOnly(dm))
	}
	if err := CheckRoot(h.view.via, d); err != nil {
		h.log.Warn("rescue dir refused", zap.String("dir", d), zap.Error(err))
		return fail("%v", err)
	}
	loc := Location{Root: d, Via: h.view.via, Kind: KindContainer, Prefix: layout.ContainerName(c)}
	if fm.m != nil {
		loc.SameFS, loc.FSType = sameSuper(dm, fm.m), fm.m.FSType
	}
	return loc, nil
}

// locateInside places the file of c, held in a container, inside the
// container (rescue.containers: inside): fs_dir at the root of the file's
// mount as the container sees it, reached through the holder's own root
// (/proc/PID/root), where the holder's own vfsmount makes link possible.
// The container controls every directory on that path, so the engine
// resolves all of it beneath the holder's root without following a
// symlink (Location.Beneath); the checks here are a first look only.
func (h *Host) locateInside(c *scanner.Candidate, cm *Mount) (Location, bool, string) {
	root := path.Join(cm.MountPoint, h.rc.FSDir)
	if cm.ReadOnly() {
		return Location{}, false, "fs_dir " + root + " in the container: " + h.readOnly(cm)
	}
	via := h.proc.Path(c.ProcDir() + "/root")
	if err := CheckRoot(via, root); err != nil {
		h.log.Warn("rescue dir refused", zap.String("dir", root), zap.Int("pid", c.PID), c.ContainerField(), zap.Error(err))
		return Location{}, false, err.Error() + " (in the container)"
	}
	return Location{Root: root, Via: via, Beneath: true, Kind: KindFSDir, SameMount: true, SameFS: true, FSType: cm.FSType}, true, ""
}

// locateSameFS finds a root on fm's filesystem, or says why there is none.
func (h *Host) locateSameFS(c *scanner.Candidate, fm fileMount, host []Mount) (Location, bool, []string) {
	cm := fm.m
	via := h.view.via
	var why []string
	for _, d := range h.rc.Dirs {
		id, _, _, err := pathMount(via, d)
		if err != nil {
			h.log.Debug("rescue dir not usable", zap.String("dir", d), zap.Error(err))
			continue
		}
		dm := byID(host, id)
		if dm == nil || !sameSuper(dm, cm) {
			continue
		}
		if dm.ReadOnly() {
			why = append(why, "rescue dir "+d+": "+h.readOnly(dm))
			continue
		}
		if err := CheckRoot(via, d); err != nil {
			h.log.Warn("rescue dir refused", zap.String("dir", d), zap.Error(err))
			why = append(why, err.Error())
			continue
		}
		loc := Location{Root: d, Via: via, Kind: KindDir, SameFS: true, FSType: cm.FSType}
		if fm.sameNS {
			if dm.ID == cm.ID {
				loc.SameMount = true
				return loc, true, nil
			}
			// The same directory may be reachable through the file's own
			// mount (a bind mount of a parent): then link works there.
			fsPath := filepath.Join(dm.Root, relTo(filepath.Clean(d), dm.MountPoint))
			if isUnder(fsPath, cm.Root) {
				alt := filepath.Join(cm.MountPoint, relTo(fsPath, cm.Root))
				if aid, _, _, err := pathMount(via, alt); err == nil && aid == cm.ID {
					loc.Root, loc.SameMount = alt, true
				}
			}
		}
		return loc, true, nil
	}
	if h.rc.FSDir == "" {
		return Location{}, false, why
	}
	if fm.sameNS {
		root := filepath.Join(cm.MountPoint, h.rc.FSDir)
		if cm.ReadOnly() {
			return Location{}, false, append(why, "fs_dir "+root+": "+h.readOnly(cm))
		}
		id, _, _, err := pathMount(via, root)
		switch {
		case err != nil:
			why = append(why, fmt.Sprintf("fs_dir %s: %v", root, err))
		case id != cm.ID:
			why = append(why, fmt.Sprintf("fs_dir %s: another mount is in its place", root))
		default:
			if err := CheckRoot(via, root); err != nil {
				h.log.Warn("rescue dir refused", zap.String("dir", root), zap.Error(err))
				return Location{}, false, append(why, err.Error())
			}
			return Location{Root: root, Via: via, Kind: KindFSDir, SameMount: true, SameFS: true, FSType: cm.FSType}, true, nil
		}
	}
	if c.InContainer() {
		// rescue.containers: inside (Locate sends the other choice
		// elsewhere): the container's own view of the file's mount.
		loc, ok, w := h.locateInside(c, cm)
		if !ok {
			why = append(why, w)
		}
		return loc, ok, why
	}
	// The holder is in another mount namespace with the host's root (a
	// sandboxed service), or its mount is hidden: use the root of the same
	// filesystem as the host mounts it; link is impossible anyway across
	// vfsmounts.
	var best *Mount
	for i := range host {
		m := &host[i]
		if sameSuper(m, cm) && !m.ReadOnly() && (best == nil || len(m.Root) < len(best.Root)) {
			best = m
		}
	}
	if best == nil {
		return Location{}, false, append(why, "no writable host mount of this filesystem")
	}
	root := filepath.Join(best.MountPoint, h.rc.FSDir)
	if id, _, _, err := pathMount(via, root); err != nil || id != best.ID {
		return Location{}, false, append(why, fmt.Sprintf("fs_dir %s: not on the host mount %s", root, best.MountPoint))
	}
	if err := CheckRoot(via, root); err != nil {
		h.log.Warn("rescue dir refused", zap.String("dir", root), zap.Error(err))
		return Location{}, false, append(why, err.Error())
	}
	return Location{Root: root, Via: via, Kind: KindFSDir, SameFS: true, FSType: cm.FSType}, true, nil
}
