// Package scanner finds regular files that were deleted while a process
// still holds them open, by walking /proc/PID/fd.
package scanner

import (
	"io/fs"
	"strconv"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Candidate is one descriptor that refers to a deleted regular file.
// From a sweep it is a snapshot assembled from several reads of /proc
// (the name, the stat and the fdinfo of a descriptor are separate calls,
// between which the holder may point the number at another file), good
// for a cheap first look only. The relink engine pins the file, takes the
// name, inode and mount from its own descriptor (Identify) and decides on
// that candidate, refusing a pin whose name or identity differs.
type Candidate struct {
	// Holder.
	PID       int    // process id (thread group id)
	StartTime uint64 // process start time in clock ticks since boot, proc(5) stat field 22
	Comm      string // /proc/PID/comm
	Exe       string // /proc/PID/exe target, "" when unreadable
	UID       uint32 // real uid of the holder
	// TID is a live thread of the holder through which its descriptors
	// are reached, when the thread-group leader has exited (pthread_exit
	// from main): the leader's /proc/PID/fd is then empty while the other
	// threads still share the table. 0 means the leader itself.
	TID int
	// MntNS is the holder's mount namespace (the inode number of
	// /proc/PID/ns/mnt, "mnt:[N]") when it is not the host's (PID 1's,
	// or the scanner's own where PID 1 cannot be inspected); 0 for a
	// holder in the host's namespace. Its Path is in its own view then.
	MntNS uint64
	// ContainerID is the container that /proc/PID/cgroup names for a
	// holder in another mount namespace (a Docker, CRI or Podman id, an
	// nspawn machine name), "" when it names none. A label, not proof:
	// whoever creates a cgroup chooses its name.
	ContainerID string
	// OtherRoot is set for a holder in another mount namespace whose root
	// directory is not the host's: a container's (pivot_root, chroot),
	// unlike a service that systemd only sandboxes (ProtectSystem=,
	// PrivateTmp=), whose paths are the host's.
	OtherRoot bool

	// Descriptor, from /proc/PID/fdinfo/FD (MntID, once pinned, from the
	// pinned file's).
	FD    int
	Flags uint32 // open flags (O_ACCMODE, O_APPEND, O_TMPFILE …)
	Pos   int64  // file position
	MntID int    // mount id, resolvable through /proc/PID/mountinfo

	// Inode, from stat(2) through the magic link (once pinned, from
	// fstat(2) of the pin).
	Dev   uint64
	Ino   uint64
	Nlink uint64
	Size  int64
	Mode  fs.FileMode // Go file mode (type and permission bits)
	Owner uint32      // st_uid of the file
	Group uint32      // st_gid of the file
	// Blocks is st_blocks (stat(2)), in 512-byte units: what the inode
	// allocates on disk, holes not counted, whatever Size says.
	Blocks int64

	// Path is the holder's view of the original name with the " (deleted)"
	// suffix removed, as raw bytes: it may contain newlines or be invalid UTF-8.
	// It is a hint for naming only, never something to open.
	Path []byte

	// TmpFile is set for a file opened with O_TMPFILE (never linked anywhere).
	TmpFile bool
	// Linkable is set when linkat(2) can give the inode a name again:
	// it still has another link (Nlink > 0), or it is an O_TMPFILE file
	// (which the kernel refuses only if it was opened with O_EXCL).
	Linkable bool
}

// ProcDir is the directory below /proc that holds c's descriptor table:
// "PID", or "PID/task/TID" when the leader has exited.
func (c *Candidate) ProcDir() string {
	if c.TID != 0 {
		return strconv.Itoa(c.PID) + "/task/" + strconv.Itoa(c.TID)
	}
	return strconv.Itoa(c.PID)
}

// InContainer reports whether c's holder runs in a container of its own:
// another mount namespace with its own root, or one a container's cgroup
// names. Its files are then named in the container's view, and rescued
// outside it (policy: rescue.containers).
func (c *Candidate) InContainer() bool {
	return c.MntNS != 0 && (c.OtherRoot || c.ContainerID != "")
}

// ContainerField returns the fields that name the holder's namespace in
// an event about c's file: "mntns" and, when known, "container_id"; none
// for a holder in the host's mount namespace. Every event and the sidecar
// take them from here, so that all name a container alike.
func (c *Candidate) ContainerField() zap.Field {
	if c.MntNS == 0 {
		return zap.Skip()
	}
	return zap.Inline(containerFields{mntNS: c.MntNS, id: c.ContainerID})
}

type containerFields struct {
	mntNS uint64
	id    string
}

func (f containerFields) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddUint64("mntns", f.mntNS)
	if f.id != "" {
		enc.AddString("container_id", f.id)
	}
	return nil
}

// Key identifies an inode across processes and descriptors.
type Key struct {
	Dev uint64
	Ino uint64
}

// Key returns the inode identity of c.
func (c *Candidate) Key() Key { return Key{Dev: c.Dev, Ino: c.Ino} }

// Writable reports whether the holder's descriptor was opened for writing.
func (c *Candidate) Writable() bool {
	const accMode = 0o3 // O_ACCMODE
	return c.Flags&accMode != 0
}

// Result is what one sweep found and what it could not look at.
type Result struct {
	Candidates []Candidate
	// Procs and FDs count the processes whose descriptors were read and
	// the descriptors examined; from the BPF backend, which examines every
	// descriptor in the kernel, the processes that hold candidates (or,
	// with Track, tracked files) and those descriptors.
	Procs    int
	FDs      int
	Vanished int // processes or descriptors gone during the sweep (normal)
	// Gone lists the processes found exited when their turn came (not
	// those that a walk of every table merely did not show).
	Gone     []int
	Denied   int           // processes the sweep was not allowed to inspect
	Duration time.Duration // wall time of the sweep
	// Unanswered lists the descriptors that look deleted but could not be
	// confirmed: their filesystem did not answer (see Options.Guard).
	Unanswered []Unanswered
	// Held lists, for the paths Scanner.Track accepts, which process
	// holds files open in which directory: each pair once, deleted files
	// and live ones alike (the holder's view of the name).
	Held []Held
}

// Held says that a process holds files open in a directory.
type Held struct {
	PID int
	Dir string
	// FDs are descriptors of those files: every one from the /proc
	// sweep; from the BPF walk, which writes a run of consecutive
	// descriptors in one directory once, the first of each run.
	FDs []int32
}

// Target is a process and some of its descriptors, for SweepFDs.
type Target struct {
	PID int
	FDs []int32
}

// Unanswered is a descriptor whose filesystem did not answer.
type Unanswered struct {
	PID, FD int
	Path    []byte // the holder's name for the file, " (deleted)" cut
	MntID   int
}
