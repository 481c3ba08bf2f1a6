// Package relink gives the data of a deleted-but-open file a name again.
//
// A rescue has two steps. Pin opens the holder's descriptor through
// /proc/PID/fd/N and takes the file's name and inode from that descriptor
// of its own, so that from then on the data survives the holder's exit, a
// reused PID or a swapped file is refused, and what callers decide on
// (Pin.Candidate) is the file that is pinned.
// Rescue then runs the method ladder (link, reflink, copy; cheapest first,
// moving down only when a method is not supported here), publishes the result
// atomically under a rescue root that it walks with openat2(2), or where a
// sandbox refuses that one component at a time, without ever following a
// symlink, carries over ownership, mode, timestamps and extended
// attributes, and writes a NAME.relinkd.json sidecar. Follow keeps appending
// what a writer adds until no process holds the file open for writing.
package relink

import (
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Method is one rung of the rescue ladder.
type Method string

// The rescue methods, cheapest first.
const (
	// MethodLink gives the inode itself a new name with linkat(2). It works
	// only for an inode that still has another link, or an O_TMPFILE file
	// opened without O_EXCL, and only on the same mount.
	MethodLink Method = "link"
	// MethodReflink clones the extents with FICLONE (ioctl_ficlone(2)): O(1)
	// and no extra space, on btrfs, XFS with reflink=1, bcachefs; same mount.
	MethodReflink Method = "reflink"
	// MethodCopy copies the bytes with copy_file_range(2), keeping holes.
	MethodCopy Method = "copy"
)

// DefaultMethods is the full ladder, used when Options.Methods is empty.
var DefaultMethods = []Method{MethodLink, MethodReflink, MethodCopy}

// ParseMethod returns the Method named s.
func ParseMethod(s string) (Method, error) {
	switch m := Method(s); m {
	case MethodLink, MethodReflink, MethodCopy:
		return m, nil
	}
	return "", fmt.Errorf("unknown rescue method %q (want link, reflink or copy)", s)
}

// Sentinel errors. Callers test them with errors.Is; a *RescueError wraps them.
var (
	// ErrVanished: the process or the descriptor went away (ENOENT, ESRCH)
	// before the inode was pinned. This is normal and not a failure.
	ErrVanished = errors.New("process or descriptor vanished")
	// ErrIdentity: the descriptor no longer refers to the candidate's inode,
	// or the PID now belongs to another process.
	ErrIdentity = errors.New("identity changed (pid reused or file swapped)")
	// ErrNotRegular: the descriptor is not a regular file (or is a memfd).
	ErrNotRegular = errors.New("not a regular file")
	// ErrNoSpace: the destination is full, or the rescue would leave less
	// free space than Destination.MinFreeBytes.
	ErrNoSpace = errors.New("not enough free space at the destination")
	// ErrUnsafePath: a symlink, a non-directory or an unsafe directory was
	// found on the way to the destination; nothing was written.
	ErrUnsafePath = errors.New("unsafe destination path")
	// ErrUnsupported: no allowed method works for this file and destination.
	ErrUnsupported = errors.New("no allowed rescue method works here")
)

// RescueError describes a failed pin or rescue.
type RescueError struct {
	Op     string // "pin", "rescue", "follow"
	Method Method // the method that failed, "" before the ladder started
	PID    int
	FD     int
	Path   string // the holder's name for the file (a hint), or the destination
	Err    error
}

func (e *RescueError) Error() string {
	s := fmt.Sprintf("%s pid %d fd %d", e.Op, e.PID, e.FD)
	if e.Path != "" {
		s += fmt.Sprintf(" (%q)", e.Path)
	}
	if e.Method != "" {
		s += " by " + string(e.Method)
	}
	return s + ": " + e.Err.Error()
}

func (e *RescueError) Unwrap() error { return e.Err }

// Options configure an Engine.
type Options struct {
	// ProcRoot is where procfs is mounted; "" means /proc.
	ProcRoot string
	// Methods is the ladder to try, in order; empty means DefaultMethods.
	Methods []Method
	// FollowPoll is how often Follow looks for growth and remaining
	// writers; 0 means 250ms.
	FollowPoll time.Duration
	// Hash computes the SHA-256 of the rescued file (read back from the
	// destination) into Result.SHA256.
	Hash bool
	// Sidecar writes NAME.relinkd.json beside each rescued file.
	Sidecar bool
	// Progress, when set, is called after each chunk a copy or a follow
	// writes: a sign of life for a caller that watches for rescues stuck
	// in a filesystem that stopped answering. Destination.Progress
	// overrides it for one rescue.
	Progress func()
	// Writers is shared by the follows of every engine given it, so that
	// many follows share their passes over /proc; nil gives the engine
	// one of its own.
	Writers *Writers
}

// Engine pins and rescues files. It holds no per-file state and is safe for
// concurrent use.
type Engine struct {
	procRoot string
	methods  []Method
	poll     time.Duration
	hash     bool
	sidecar  bool
	log      *zap.Logger
	walk     walker // how destinations are resolved, probed once
	writers  *Writers
	progress func()

	// Test hooks; nil and zero in production.
	chunk     int64            // copy chunk size; 0 means defaultChunk
	hookChunk func(off int64)  // called after each copied chunk
	noTmpfile bool             // pretend O_TMPFILE is unsupported
	hookPoll  func(size int64) // called on each follow poll
}

// New returns an Engine with opts.
func New(opts Options, log *zap.Logger) *Engine {
	if log == nil {
		log = zap.NewNop()
	}
	e := &Engine{
		procRoot: opts.ProcRoot,
		methods:  opts.Methods,
		poll:     opts.FollowPoll,
		hash:     opts.Hash,
		sidecar:  opts.Sidecar,
		log:      log,
		walk:     newWalker(),
		progress: opts.Progress,
	}
	if e.procRoot == "" {
		e.procRoot = "/proc"
	}
	if len(e.methods) == 0 {
		e.methods = DefaultMethods
	}
	if e.poll <= 0 {
		e.poll = 250 * time.Millisecond
	}
	if e.writers = opts.Writers; e.writers == nil {
		e.writers = NewWriters(e.procRoot)
	}
	return e
}

// Destination is the plan for one rescue: where the file goes, by which
// methods, within which limits.
type Destination struct {
	// Root is the rescue root, an absolute path trusted as configured. Its
	// last component is created 0700 if absent and must be a directory
	// owned by the engine's user and not writable by group or others.
	Root string
	// Via is the path through which the engine reaches Root from its own
	// mount namespace: "" when Root is named in it, or a /proc/PID/root
	// magic link (the host's namespace, as mounts.Host.Via gives it).
	// Messages and Result.Path name Root without it.
	Via string
	// Beneath says that Root is a path in the view of a holder whose root
	// directory Via is (/proc/PID/root, rescue.containers: inside): the
	// holder may own every directory on the way, so every component of
	// Root, not only the last, is opened beneath Via one at a time without
	// following a symlink, and Via is used only while the pinned holder
	// still lives (its start time is checked after Via is opened, so that
	// a reused PID cannot lead the write into another container).
	Beneath bool
	// Rel is the path below Root, such as "var/log/app.log" (usually the
	// original path). It is cleaned lexically ("..", "." and empty
	// components dropped); every directory is created 0700 if absent and
	// opened with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), or where
	// that is refused one component at a time with O_NOFOLLOW. The final
	// name is made unique (NAME, NAME.1, NAME.2 …): nothing is overwritten.
	Rel string
	// MinFreeBytes: a reflink or copy that would leave less free space
	// than this on the destination filesystem is refused (or aborted) with
	// ErrNoSpace.
	MinFreeBytes uint64
	// Rule is the name of the watch rule that chose this file, for the log
	// event and the sidecar; "" if none.
	Rule string
	// NoRoomToCopy, when set, says why the caller left copy out of the
	// methods for want of space; if the others do not work here, the
	// rescue fails with ErrNoSpace (the file did not fit), not
	// ErrUnsupported.
	NoRoomToCopy string
	// Methods are tried in order, moving down only when one does not
	// work here; nil means the engine's (Options.Methods).
	Methods []Method
	// Progress, when set, is called after each chunk this rescue (and
	// the follow of its result) writes; nil means Options.Progress.
	Progress func()
}

// methods returns d's methods, or the engine's.
func (e *Engine) methodsFor(d Destination) []Method {
	if len(d.Methods) > 0 {
		return d.Methods
	}
	return e.methods
}

// progressFor returns d's progress callback, or the engine's.
func (e *Engine) progressFor(d Destination) func() {
	if d.Progress != nil {
		return d.Progress
	}
	return e.progress
}

// Result describes a finished rescue.
type Result struct {
	Path     string        // final path of the rescued file
	Method   Method        // the method that worked
	Bytes    int64         // size of the rescued file
	Duration time.Duration // wall time of the rescue (pin excluded)
	SHA256   string        // hex digest when Options.Hash is set
	Followed bool          // set by Follow once the last writer closed the file
	Sidecar  string        // path of the sidecar, "" if none was written
	// Stopped says why Follow ended before the last writer closed the
	// file: StopTruncation or StopShutdown; "" otherwise.
	Stopped string
}

// Why a follow stopped early (Result.Stopped), the "reason" field of the
// "follow stopped" event.
const (
	// StopTruncation: the source shrank (copytruncate log rotation);
	// what was copied is kept, the writer goes on into a file no longer
	// mirrored.
	StopTruncation = "truncation"
	// StopShutdown: the follow's context ended (shutdown, SIGINT); what
	// was appended is durable, and a sidecar still says "following".
	StopShutdown = "shutdown"
)

// Resolution names how the engine resolves destination paths: "openat2",
// or "component walk" where openat2 is refused (see ProbeOpenat2).
func (e *Engine) Resolution() string { return e.walk.String() }
