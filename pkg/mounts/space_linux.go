package mounts

import (
	"cmp"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/pkg/scanner"
)

// FSUsage is what deleted-but-open files hold on one filesystem: the space
// that comes back only when their last descriptor closes (or that a
// rescue by copy would need again).
type FSUsage struct {
	// MountPoint is where the host mounts the filesystem (its mount with
	// the shortest root, as the host's mount table lists it), or where the
	// holder does when the host has no mount of it; "" when the file's
	// mount is unknown.
	MountPoint string
	FSType     string
	Dev        string // "MAJOR:MINOR" of the filesystem, as mountinfo(5) gives it
	Files      int    // inodes, each counted once however many descriptors hold it
	// Allocated is the sum of st_blocks×512 of those inodes: the blocks
	// they hold on disk. A sparse file counts what it allocates, not its
	// apparent size.
	Allocated uint64
	Size      uint64        // the sum of their apparent sizes (st_size)
	Holders   []HolderUsage // every holder, most allocated bytes first
}

// HolderUsage is what one process holds deleted on a filesystem. An inode
// it holds on several descriptors counts once; an inode several processes
// hold counts for each of them (but once in FSUsage).
type HolderUsage struct {
	PID       int
	Comm      string
	UID       uint32
	Files     int
	Allocated uint64
}

// DeletedOpen sums up, per filesystem, the deleted-but-open files of a
// sweep: the files and the bytes they hold on disk, and who holds them,
// largest first. Each file's filesystem is found from its mount id (the
// host's mount table, else the holder's), else from its device number, as
// Locate does; bind mounts of one filesystem are one entry. It reads the
// host's mount table once, and a holder's only for a mount the host does
// not list.
func (h *Host) DeletedOpen(cs []scanner.Candidate) []FSUsage {
	host, _ := h.view.mounts() // without it, files are grouped by device
	type holderKey struct {
		pid   int
		start uint64
	}
	type fsAcc struct {
		u       FSUsage
		seen    map[scanner.Key]bool
		holders map[holderKey]*HolderUsage
		held    map[holderKey]map[scanner.Key]bool
	}
	byFS := map[string]*fsAcc{}
	holderMounts := map[int][]Mount{}
	var order []string
	for i := range cs {
		c := &cs[i]
		mp, fstype, dev := h.filesystemOf(c, host, holderMounts)
		a := byFS[dev]
		if a == nil {
			a = &fsAcc{
				u:       FSUsage{MountPoint: mp, FSType: fstype, Dev: dev},
				seen:    map[scanner.Key]bool{},
				holders: map[holderKey]*HolderUsage{},
				held:    map[holderKey]map[scanner.Key]bool{},
			}
			byFS[dev] = a
			order = append(order, dev)
		}
		alloc := uint64(max(c.Blocks, 0)) * 512
		k := c.Key()
		if !a.seen[k] {
			a.seen[k] = true
			a.u.Files++
			a.u.Allocated += alloc
			a.u.Size += uint64(max(c.Size, 0))
		}
		hk := holderKey{c.PID, c.StartTime}
		h := a.holders[hk]
		if h == nil {
			h = &HolderUsage{PID: c.PID, Comm: c.Comm, UID: c.UID}
			a.holders[hk] = h
			a.held[hk] = map[scanner.Key]bool{}
		}
		if !a.held[hk][k] {
			a.held[hk][k] = true
			h.Files++
			h.Allocated += alloc
		}
	}
	out := make([]FSUsage, 0, len(order))
	for _, dev := range order {
		a := byFS[dev]
		for _, h := range a.holders {
			a.u.Holders = append(a.u.Holders, *h)
		}
		slices.SortFunc(a.u.Holders, func(x, y HolderUsage) int {
			return cmp.Or(cmp.Compare(y.Allocated, x.Allocated), cmp.Compare(x.PID, y.PID))
		})
		out = append(out, a.u)
	}
	slices.SortStableFunc(out, func(x, y FSUsage) int {
		return cmp.Or(cmp.Compare(y.Allocated, x.Allocated), cmp.Compare(x.MountPoint, y.MountPoint))
	})
	return out
}

// filesystemOf names c's filesystem: the host mount point that stands for
// it, its type and its device ("MAJOR:MINOR"), the key that groups files.
// The mount is found as resolveMount finds it; holders' mount tables are
// read once per call of DeletedOpen (theirs, by pid).
func (h *Host) filesystemOf(c *scanner.Candidate, host []Mount, holders map[int][]Mount) (mountPoint, fstype, dev string) {
	var m *Mount
	sameNS := false
	if c.MntID != 0 {
		if m = byID(host, c.MntID); m != nil {
			sameNS = true
		} else {
			ms, ok := holders[c.PID]
			if !ok {
				ms, _ = h.proc.MountInfo(strconv.Itoa(c.PID))
				holders[c.PID] = ms
			}
			m = byID(ms, c.MntID)
		}
	}
	if m == nil {
		maj, mnr := unix.Major(c.Dev), unix.Minor(c.Dev)
		for i := range host {
			if h := &host[i]; h.Major == maj && h.Minor == mnr && (m == nil || len(h.Root) < len(m.Root)) {
				m, sameNS = h, true
			}
		}
		if m == nil {
			// No mount table names it: the device number alone.
			return "", "", devString(maj, mnr)
		}
	}
	// The same filesystem may be mounted in several places (bind mounts,
	// a container's view): name it by the host mount with the shortest
	// root, the one that shows the whole filesystem, where there is one.
	var best *Mount
	if sameNS {
		best = m
	}
	for i := range host {
		if h := &host[i]; sameSuper(h, m) && (best == nil || len(h.Root) < len(best.Root)) {
			best = h
		}
	}
	if best == nil {
		best = m
	}
	return best.MountPoint, best.FSType, devString(m.Major, m.Minor)
}

func devString(major, minor uint32) string {
	return strconv.FormatUint(uint64(major), 10) + ":" + strconv.FormatUint(uint64(minor), 10)
}
