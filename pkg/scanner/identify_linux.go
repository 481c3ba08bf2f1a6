package scanner

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
	"github.com/relinkd/relinkd/internal/procfs"
)

// ErrNotCandidate means that an open file is not what a candidate is, a
// deleted regular file: it is of another type, or it still has its name.
var ErrNotCandidate = errors.New("not a deleted regular file")

// Identify returns the candidate that fd, a descriptor of the calling
// process, is. It serves the relink engine's pin, a descriptor made by
// opening /proc/PID/fd/N: such an open file shares the holder's path
// (vfsmount and dentry), so whatever it shows is the holder's file at the
// moment of the open, however the holder has shuffled its descriptors
// since.
//
// Everything rules, quotas and locations look at comes from that one open
// file, read through the calling process's own descriptor: the inode
// (dev, ino, nlink, size, mode, owner, group) from fstat(2) of fd; the
// name from the link text of PROC/self/fd/FD, which is the holder's name
// for that very inode, " (deleted)" included (readlink of a magic link is
// d_path(3) of the file's path, relative to the reader's root, for
// /proc/PID/fd/N as for our own); and mnt_id from PROC/self/fdinfo/FD.
// The holder (pid, start time, comm, exe, uid, tid), its descriptor number
// and what its own fdinfo said (flags, pos) are copied from holder.
//
// The file must pass the tests a sweep applies to a descriptor: a regular
// file whose link text carries " (deleted)", and, when it still has links,
// whose name no longer leads to it in the holder's root (a live file merely
// called "x (deleted)" does); a name of a memfd or secretmem file only when
// its mount is one the holder lists. Otherwise Identify fails with
// ErrNotCandidate.
func Identify(procRoot string, holder *Candidate, fd int) (Candidate, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	var st unix.Stat_t
	if err := eintr.Retry0(func() error { return unix.Fstat(fd, &st) }); err != nil {
		return Candidate{}, fmt.Errorf("fstat fd %d: %w", fd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return Candidate{}, fmt.Errorf("%w: mode %#o", ErrNotCandidate, st.Mode)
	}
	self := procRoot + "/self/"
	n := strconv.Itoa(fd)
	buf := make([]byte, 512)
	link, err := procfs.ReadlinkAt(unix.AT_FDCWD, self+"fd/"+n, &buf)
	if err != nil {
		return Candidate{}, fmt.Errorf("readlink %sfd/%s: %w", self, n, err)
	}
	path, deleted := trimDeleted(link)
	if !deleted {
		return Candidate{}, fmt.Errorf("%w: its name %q is not deleted", ErrNotCandidate, link)
	}
	holderDir := procRoot + "/" + holder.ProcDir()
	if st.Nlink > 0 && liveName(unix.AT_FDCWD, holderDir+"/root", link, &st) {
		return Candidate{}, fmt.Errorf("%w: %q is its live name", ErrNotCandidate, link)
	}
	path = bytes.Clone(path)
	raw, err := procfs.ReadFileAt(unix.AT_FDCWD, self+"fdinfo/"+n, &buf)
	if err != nil {
		return Candidate{}, fmt.Errorf("read %sfdinfo/%s: %w", self, n, err)
	}
	info, err := procfs.ParseFDInfo(raw)
	if err != nil {
		return Candidate{}, err
	}
	if onInternalMount(path) {
		raw, err := procfs.ReadFileAt(unix.AT_FDCWD, holderDir+"/mountinfo", &buf)
		if err != nil {
			return Candidate{}, fmt.Errorf("read %s/mountinfo: %w", holderDir, err)
		}
		if !procfs.MountIDs(raw)[info.MntID] {
			return Candidate{}, fmt.Errorf("%w: %q is on an internal mount", ErrNotCandidate, path)
		}
	}
	c := *holder
	c.Path = path
	c.MntID = info.MntID
	c.TmpFile = holder.Flags&oTmpfile != 0
	c.setInode(&st)
	return c, nil
}
