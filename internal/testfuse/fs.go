package testfuse

import (
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// node is a file or the root directory, held in memory. Nodes are never
// freed: an unlinked file keeps its node (with nlink 0) for as long as the
// kernel may still ask about it, and a test filesystem lives for one test,
// so FORGET needs no bookkeeping.
type node struct {
	id                  uint64
	mode                uint32 // S_IFMT | permissions
	nlink               uint32
	uid, gid            uint32
	data                []byte
	atime, mtime, ctime time.Time
}

// fs is the flat filesystem: a root directory of regular files. It is not
// safe for concurrent use; Server.mu guards it.
type fs struct {
	nodes  map[uint64]*node
	names  map[string]uint64 // entries of the root directory
	nextID uint64
	// directIO sets FOPEN_DIRECT_IO in every open's reply.
	directIO bool
}

func newFS(directIO bool) *fs {
	now := time.Now()
	root := &node{id: rootID, mode: unix.S_IFDIR | 0o755, nlink: 2, atime: now, mtime: now, ctime: now}
	return &fs{
		nodes:    map[uint64]*node{rootID: root},
		names:    map[string]uint64{},
		nextID:   rootID + 1,
		directIO: directIO,
	}
}

// handle answers one request. It returns the reply's payload (after the
// out header) or an errno; INIT is answered by the server itself.
func (f *fs) handle(h inHeader, body []byte) ([]byte, unix.Errno) {
	// Extensions (security context, supplementary groups) follow the
	// arguments only when INIT asked for them, which this server does not;
	// strip them anyway so names parse.
	if ext := int(h.TotalExtlen) * 8; ext > 0 && ext <= len(body) {
		body = body[:len(body)-ext]
	}
	n := f.nodes[h.NodeID]
	if n == nil {
		return nil, unix.ENOENT
	}
	switch Op(h.Opcode) {
	case OpLookup:
		if !f.isDir(n) {
			return nil, unix.ENOTDIR
		}
		id, ok := f.names[cstring(body)]
		if !ok {
			// A plain ENOENT, not a zero-nodeid entry: nothing is
			// cached, so a later create is seen at once.
			return nil, unix.ENOENT
		}
		return encode(nil, f.entry(f.nodes[id])), 0

	case OpGetattr:
		return encode(nil, attrOut{Attr: f.attr(n)}), 0

	case OpSetattr:
		var in setattrIn
		if _, err := decode(body, &in); err != nil {
			return nil, unix.EINVAL
		}
		f.setattr(n, in)
		return encode(nil, attrOut{Attr: f.attr(n)}), 0

	case OpMknod:
		var in mknodIn
		rest, err := decode(body, &in)
		if err != nil {
			return nil, unix.EINVAL
		}
		if in.Mode&unix.S_IFMT != unix.S_IFREG {
			return nil, unix.EPERM
		}
		c, errno := f.create(n, h, cstring(rest), in.Mode)
		if errno != 0 {
			return nil, errno
		}
		return encode(nil, f.entry(c)), 0

	case OpCreate:
		var in createIn
		rest, err := decode(body, &in)
		if err != nil {
			return nil, unix.EINVAL
		}
		// The kernel has already applied the umask (no FUSE_DONT_MASK).
		c, errno := f.create(n, h, cstring(rest), unix.S_IFREG|in.Mode&0o7777)
		if errno != 0 {
			return nil, errno
		}
		return encode(nil, f.entry(c), f.openOut(c)), 0

	case OpUnlink:
		if !f.isDir(n) {
			return nil, unix.ENOTDIR
		}
		name := cstring(body)
		id, ok := f.names[name]
		if !ok {
			return nil, unix.ENOENT
		}
		delete(f.names, name)
		c := f.nodes[id]
		c.nlink = 0
		c.ctime = time.Now()
		n.mtime, n.ctime = c.ctime, c.ctime
		return nil, 0

	case OpOpen:
		if f.isDir(n) {
			return nil, unix.EISDIR
		}
		return encode(nil, f.openOut(n)), 0

	case OpRead:
		var in readIn
		if _, err := decode(body, &in); err != nil {
			return nil, unix.EINVAL
		}
		if in.Offset >= uint64(len(n.data)) {
			return nil, 0
		}
		end := min(in.Offset+uint64(in.Size), uint64(len(n.data)))
		n.atime = time.Now()
		return slices.Clone(n.data[in.Offset:end]), 0

	case OpWrite:
		var in writeIn
		data, err := decode(body, &in)
		if err != nil || uint64(len(data)) < uint64(in.Size) {
			return nil, unix.EINVAL
		}
		data = data[:in.Size]
		if end := in.Offset + uint64(len(data)); end > uint64(len(n.data)) {
			n.data = append(n.data, make([]byte, end-uint64(len(n.data)))...)
		}
		copy(n.data[in.Offset:], data)
		n.mtime = time.Now()
		n.ctime = n.mtime
		return encode(nil, writeOut{Size: in.Size}), 0

	case OpStatfs:
		return encode(nil, statfsOut{
			Blocks: 1 << 20, Bfree: 1 << 19, Bavail: 1 << 19,
			Files: 1 << 16, Ffree: 1<<16 - uint64(len(f.nodes)),
			Bsize: 4096, Namelen: 255, Frsize: 4096,
		}), 0

	case OpFlush, OpRelease, OpFsync, OpReleasedir, OpFsyncdir, OpDestroy:
		return nil, 0

	case OpAccess:
		// Without default_permissions the kernel asks only for access(2)
		// and chdir(2); everything is allowed, as for root.
		return nil, 0

	case OpOpendir:
		if !f.isDir(n) {
			return nil, unix.ENOTDIR
		}
		return encode(nil, openOut{Fh: n.id}), 0

	case OpReaddir:
		var in readIn
		if _, err := decode(body, &in); err != nil {
			return nil, unix.EINVAL
		}
		return f.readdir(n, in), 0

	case OpGetxattr:
		return nil, unix.ENODATA

	case OpListxattr:
		var in getxattrIn
		if _, err := decode(body, &in); err != nil {
			return nil, unix.EINVAL
		}
		if in.Size == 0 {
			return encode(nil, getxattrOut{}), 0
		}
		return nil, 0
	}
	// Everything else, including LSEEK, STATX and COPY_FILE_RANGE: the
	// kernel remembers ENOSYS for many of those and falls back (generic
	// llseek, GETATTR, splice).
	return nil, unix.ENOSYS
}

func (f *fs) isDir(n *node) bool { return n.mode&unix.S_IFMT == unix.S_IFDIR }

// create adds a regular file name to the root directory dir.
func (f *fs) create(dir *node, h inHeader, name string, mode uint32) (*node, unix.Errno) {
	switch {
	case !f.isDir(dir):
		return nil, unix.ENOTDIR
	case name == "" || len(name) > 255:
		return nil, unix.EINVAL
	}
	if _, ok := f.names[name]; ok {
		return nil, unix.EEXIST
	}
	now := time.Now()
	c := &node{id: f.nextID, mode: mode, nlink: 1, uid: h.UID, gid: h.GID, atime: now, mtime: now, ctime: now}
	f.nextID++
	f.nodes[c.id] = c
	f.names[name] = c.id
	dir.mtime, dir.ctime = now, now
	return c, 0
}

func (f *fs) setattr(n *node, in setattrIn) {
	now := time.Now()
	if in.Valid&fattrMode != 0 {
		n.mode = n.mode&unix.S_IFMT | in.Mode&0o7777
	}
	if in.Valid&fattrUID != 0 {
		n.uid = in.UID
	}
	if in.Valid&fattrGID != 0 {
		n.gid = in.GID
	}
	if in.Valid&fattrSize != 0 && !f.isDir(n) {
		if in.Size <= uint64(len(n.data)) {
			n.data = n.data[:in.Size]
		} else {
			n.data = append(n.data, make([]byte, in.Size-uint64(len(n.data)))...)
		}
		n.mtime = now
	}
	switch {
	case in.Valid&fattrAtimeNow != 0:
		n.atime = now
	case in.Valid&fattrAtime != 0:
		n.atime = time.Unix(int64(in.Atime), int64(in.Atimensec))
	}
	switch {
	case in.Valid&fattrMtimeNow != 0:
		n.mtime = now
	case in.Valid&fattrMtime != 0:
		n.mtime = time.Unix(int64(in.Mtime), int64(in.Mtimensec))
	}
	if in.Valid&fattrCtime != 0 {
		n.ctime = time.Unix(int64(in.Ctime), int64(in.Ctimensec))
	} else {
		n.ctime = now
	}
}

// attr returns n's attributes. Replies carry them with a zero validity
// (attr_valid 0), so the kernel asks again on every stat(2).
func (f *fs) attr(n *node) attr {
	size := uint64(len(n.data))
	return attr{
		Ino:       n.id,
		Size:      size,
		Blocks:    (size + 511) / 512,
		Atime:     uint64(n.atime.Unix()),
		Mtime:     uint64(n.mtime.Unix()),
		Ctime:     uint64(n.ctime.Unix()),
		Atimensec: uint32(n.atime.Nanosecond()),
		Mtimensec: uint32(n.mtime.Nanosecond()),
		Ctimensec: uint32(n.ctime.Nanosecond()),
		Mode:      n.mode,
		Nlink:     n.nlink,
		UID:       n.uid,
		GID:       n.gid,
		Blksize:   4096,
	}
}

// entry returns a directory entry for n with zero validity for both the
// name and the attributes: every path walk sends LOOKUP again
// (d_revalidate), every stat GETATTR.
func (f *fs) entry(n *node) entryOut {
	return entryOut{NodeID: n.id, Attr: f.attr(n)}
}

func (f *fs) openOut(n *node) openOut {
	out := openOut{Fh: n.id}
	if f.directIO {
		out.OpenFlags |= fopenDirectIO
	}
	return out
}

// readdir lists ".", ".." and the files in name order, from the entry
// at in.Offset (each entry's off is the index of the next one), as many
// as fit in in.Size bytes.
func (f *fs) readdir(dir *node, in readIn) []byte {
	type ent struct {
		name string
		id   uint64
		mode uint32
	}
	ents := []ent{{".", dir.id, dir.mode}, {"..", rootID, unix.S_IFDIR}}
	names := make([]string, 0, len(f.names))
	for name := range f.names {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		c := f.nodes[f.names[name]]
		ents = append(ents, ent{name, c.id, c.mode})
	}
	var out []byte
	for i := in.Offset; i < uint64(len(ents)); i++ {
		e := ents[i]
		size := (24 + len(e.name) + 7) &^ 7
		if len(out)+size > int(in.Size) {
			break
		}
		out = encode(out, direntHeader{Ino: e.id, Off: i + 1, Namelen: uint32(len(e.name)), Type: e.mode & unix.S_IFMT >> 12})
		out = append(out, e.name...)
		out = append(out, make([]byte, size-24-len(e.name))...)
	}
	return out
}
