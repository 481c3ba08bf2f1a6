package procfs

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// DefaultRoot is where procfs is mounted unless the caller says otherwise.
const DefaultRoot = "/proc"

// FS is procfs mounted at a root, usually /proc; tests point it at a
// fixture tree. Process directories are named by dir: "PID", "self", or
// "PID/task/TID" for the descriptor table of a process whose leader has
// exited (scanner.Candidate.ProcDir). The zero value is /proc.
type FS struct{ root string }

// New returns the procfs mounted at root; "" means /proc.
func New(root string) FS { return FS{root: root} }

// Root is the directory procfs is mounted on.
func (fs FS) Root() string {
	if fs.root == "" {
		return DefaultRoot
	}
	return fs.root
}

// Path returns the path of name below the root ("PID/fd/3").
func (fs FS) Path(name string) string { return fs.Root() + "/" + name }

// direntBuf is what one getdents64(2) call fills, as os.File.ReadDir
// reads: a few hundred entries of /proc.
const direntBuf = 8 << 10

// ids lists the numeric entries of the directory name below the root.
func (fs FS) ids(name string) ([]int, error) {
	path := fs.Root()
	if name != "" {
		path = fs.Path(name)
	}
	d, err := OpenDirAt(unix.AT_FDCWD, path)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(d)
	ids, err := IDsAt(d, make([]byte, direntBuf))
	if err != nil {
		return ids, &os.PathError{Op: "getdents", Path: path, Err: err}
	}
	return ids, nil
}

// PIDs returns the processes (thread-group leaders) listed in the root,
// in directory order: one getdents pass, no per-process reads. On an error
// it returns the pids read before it.
func (fs FS) PIDs() ([]int, error) { return fs.ids("") }

// Threads returns the threads of the process pid (/proc/PID/task).
func (fs FS) Threads(pid int) ([]int, error) { return fs.ids(strconv.Itoa(pid) + "/task") }

// FDs returns the descriptors in the table of dir (dir/fd).
func (fs FS) FDs(dir string) ([]int, error) { return fs.ids(dir + "/fd") }

// LiveThread returns a thread of pid other than its leader, 0 if none.
func (fs FS) LiveThread(pid int) int {
	return LiveThreadAt(unix.AT_FDCWD, fs.Path(strconv.Itoa(pid)), pid, make([]byte, direntBuf))
}

// LastPID returns the pid most recently created on the host: the last
// field of /proc/loadavg (proc(5)).
func (fs FS) LastPID() (int, bool) {
	b, err := os.ReadFile(fs.Path("loadavg"))
	if err != nil {
		return 0, false
	}
	return ParseLoadavgLastPID(b)
}

// read reads the pseudo-file name below the root.
func (fs FS) read(name string) ([]byte, error) {
	b, err := os.ReadFile(fs.Path(name))
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	return b, nil
}

// Stat reads /proc/PID/stat.
func (fs FS) Stat(pid int) (Stat, error) {
	b, err := fs.read(strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, err
	}
	st, err := ParseStat(b)
	if err != nil {
		return Stat{}, fmt.Errorf("%s: %w", fs.Path(strconv.Itoa(pid)+"/stat"), err)
	}
	return st, nil
}

// EffectiveCaps returns the effective capability set of dir ("self" for
// relinkd), from dir/status.
func (fs FS) EffectiveCaps(dir string) (uint64, error) {
	b, err := fs.read(dir + "/status")
	if err != nil {
		return 0, fmt.Errorf("capabilities: %w", err)
	}
	caps, err := ParseStatusCapEff(b)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", fs.Path(dir+"/status"), err)
	}
	return caps, nil
}

// FDInfo reads dir/fdinfo/FD.
func (fs FS) FDInfo(dir string, fd int) (FDInfo, error) {
	name := dir + "/fdinfo/" + strconv.Itoa(fd)
	b, err := fs.read(name)
	if err != nil {
		return FDInfo{}, err
	}
	fi, err := ParseFDInfo(b)
	if err != nil {
		return FDInfo{}, fmt.Errorf("%s: %w", fs.Path(name), err)
	}
	return fi, nil
}

// MountInfo reads the mount table that dir sees (dir/mountinfo).
func (fs FS) MountInfo(dir string) ([]Mount, error) {
	return ReadMountInfo(fs.Path(dir + "/mountinfo"))
}

// MountNS returns the mount namespace of dir as readlink shows it
// ("mnt:[4026531841]", namespaces(7)): equal texts are the same namespace.
func (fs FS) MountNS(dir string) (string, error) {
	s, err := os.Readlink(fs.Path(dir + "/ns/mnt"))
	if err != nil {
		return "", fmt.Errorf("mount namespace of %s: %w", dir, err)
	}
	return s, nil
}

// PIDNS returns the inode number of the pid namespace of the process in
// dir (below the root): ns/pid, namespaces(7).
func (fs FS) PIDNS(dir string) (uint64, error) { return fs.NS(dir, "pid") }

// NS returns the inode number of the namespace of type kind ("pid",
// "user", "time", …) of the process in dir: the link ns/KIND, "KIND:[N]".
func (fs FS) NS(dir, kind string) (uint64, error) {
	s, err := os.Readlink(fs.Path(dir + "/ns/" + kind))
	if err != nil {
		return 0, fmt.Errorf("%s namespace of %s: %w", kind, dir, err)
	}
	return parseNSLink(kind, kind, []byte(s))
}
