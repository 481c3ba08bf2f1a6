package policy

// This file holds only KnownRoots, which the restart-safety work defines
// too (roots_linux.go, with looks shared between concurrent callers). The
// two agree on what they return; when both are on one branch, this file
// is the one to delete.

import (
	"path/filepath"
	"slices"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// knownRootsTimeout bounds the look at every candidate root together.
const knownRootsTimeout = 2 * time.Second

// KnownRoots returns every rescue root that may hold rescued files, as
// host paths (see Via): the configured rescue.dirs, then, with fs_dir set,
// the fs_dir at the mount point of every host mount where it exists, is on
// that very mount (not another one mounted in its place) and is a safe
// root (see checkRoot), sorted. A directory reached through several mounts
// (bind mounts) is listed once; pseudo filesystems are not looked at (an
// lstat below an autofs mount point would mount it). Each mount is looked
// at in a goroutine of its own, all of them within knownRootsTimeout: a
// hung filesystem (a FUSE server that does not answer, a dead NFS server)
// is left out, with a warning, rather than waited for. The error says why
// the mount table could not be read; the configured directories are
// returned even then.
func (p *Policy) KnownRoots() ([]string, error) {
	out := slices.Clone(p.cfg.Rescue.Dirs)
	fsDir := p.cfg.Rescue.FSDir
	if fsDir == "" {
		return out, nil
	}
	host, err := ReadMountInfo(p.host.mountinfo)
	if err != nil {
		return out, err
	}
	type look struct {
		root string
		mnt  int // the mount it must be on; 0 for a configured directory
	}
	var looks []look
	for _, d := range out {
		looks = append(looks, look{root: d}) // only to know its inode
	}
	for i := range host {
		m := &host[i]
		if slices.Contains(pseudoFS, m.FSType) {
			continue
		}
		root := filepath.Join(m.MountPoint, fsDir)
		switch j := slices.IndexFunc(looks, func(l look) bool { return l.root == root }); {
		case j < 0:
			looks = append(looks, look{root: root, mnt: m.ID})
		case looks[j].mnt != 0:
			// A mount point listed twice: the later mount is on top and
			// hides the earlier one's fs_dir.
			looks[j].mnt = m.ID
		}
	}
	type found struct {
		ok bool
		id [2]uint64 // dev, ino
	}
	results := make([]chan found, len(looks))
	via := p.host.via
	for i, l := range looks {
		results[i] = make(chan found, 1)
		go func() {
			var st unix.Stat_t
			if unix.Lstat(via+l.root, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
				results[i] <- found{}
				return
			}
			f := found{id: [2]uint64{st.Dev, st.Ino}, ok: true}
			if l.mnt != 0 {
				if id, _, _, err := pathMount(via, l.root); err != nil || id != l.mnt || checkRoot(via, l.root) != nil {
					f.ok = false
				}
			}
			results[i] <- f
		}()
	}
	deadline := time.NewTimer(knownRootsTimeout)
	defer deadline.Stop()
	seen := map[[2]uint64]bool{}
	var add, slow []string
	late := false
	for i, l := range looks {
		var f found
		if !late {
			select {
			case f = <-results[i]:
			case <-deadline.C:
				late = true
			}
		}
		if late {
			select {
			case f = <-results[i]:
			default:
				slow = append(slow, l.root)
				continue
			}
		}
		switch {
		case !f.ok || seen[f.id]:
		case l.mnt == 0:
			seen[f.id] = true
		case !slices.Contains(out, l.root) && !slices.Contains(add, l.root):
			seen[f.id] = true
			add = append(add, l.root)
		}
	}
	if len(slow) > 0 {
		p.log.Warn("rescue roots on hung filesystems left out", zap.Strings("roots", slow), zap.Duration("timeout", knownRootsTimeout))
	}
	slices.Sort(add)
	return append(out, add...), nil
}
