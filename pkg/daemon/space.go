package daemon

import "github.com/relinkd/relinkd/pkg/scanner"

// exportDeletedOpen sets relinkd_deleted_open_bytes from a full sweep's
// candidates: per filesystem, the blocks that deleted-but-open files hold
// (each inode once), which only their last close frees, so that an alert
// can fire before the disk fills. An event sweep sees only some holders
// and does not touch it.
func (d *Daemon) exportDeletedOpen(cs []scanner.Candidate) {
	bytes := map[string]uint64{}
	for _, u := range d.pol.Load().Host().DeletedOpen(cs) {
		bytes[u.MountPoint] += u.Allocated
	}
	d.m.SetDeletedOpen(bytes)
}
