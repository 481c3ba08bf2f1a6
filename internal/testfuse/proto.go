package testfuse

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// The FUSE wire protocol, transcribed from include/uapi/linux/fuse.h
// (protocol 7.38). Messages are fixed-size structs in the host's byte
// order, so they are encoded with encoding/binary and binary.NativeEndian;
// every struct here spells out the kernel's padding fields, which makes
// binary.Size equal to the C sizeof (sizes_test.go checks each one).

// Protocol version spoken by this server. The kernel offers its own
// version in INIT and uses the lower minor of the two (fuse(4)).
const (
	protoMajor = 7
	protoMinor = 38
)

// rootID is FUSE_ROOT_ID, the node ID of the root directory.
const rootID = 1

// maxWrite is the largest WRITE the kernel may send; 128 KiB is also the
// kernel's default max_pages (32) so no FUSE_MAX_PAGES is needed.
const maxWrite = 128 << 10

// readBufSize is the buffer for one request: the kernel refuses a read(2)
// of /dev/fuse shorter than FUSE_MIN_READ_BUFFER (8192) or than
// in_header + write_in + max_write.
const readBufSize = maxWrite + 4096

// Op is a FUSE opcode (enum fuse_opcode).
type Op uint32

// Opcodes of the requests the kernel sends.
const (
	OpLookup        Op = 1
	OpForget        Op = 2 // no reply
	OpGetattr       Op = 3
	OpSetattr       Op = 4
	OpReadlink      Op = 5
	OpSymlink       Op = 6
	OpMknod         Op = 8
	OpMkdir         Op = 9
	OpUnlink        Op = 10
	OpRmdir         Op = 11
	OpRename        Op = 12
	OpLink          Op = 13
	OpOpen          Op = 14
	OpRead          Op = 15
	OpWrite         Op = 16
	OpStatfs        Op = 17
	OpRelease       Op = 18
	OpFsync         Op = 20
	OpSetxattr      Op = 21
	OpGetxattr      Op = 22
	OpListxattr     Op = 23
	OpRemovexattr   Op = 24
	OpFlush         Op = 25
	OpInit          Op = 26
	OpOpendir       Op = 27
	OpReaddir       Op = 28
	OpReleasedir    Op = 29
	OpFsyncdir      Op = 30
	OpGetlk         Op = 31
	OpSetlk         Op = 32
	OpSetlkw        Op = 33
	OpAccess        Op = 34
	OpCreate        Op = 35
	OpInterrupt     Op = 36 // no reply
	OpBmap          Op = 37
	OpDestroy       Op = 38
	OpIoctl         Op = 39
	OpPoll          Op = 40
	OpNotifyReply   Op = 41 // no reply
	OpBatchForget   Op = 42 // no reply
	OpFallocate     Op = 43
	OpReaddirplus   Op = 44
	OpRename2       Op = 45
	OpLseek         Op = 46
	OpCopyFileRange Op = 47
	OpSetupmapping  Op = 48
	OpRemovemapping Op = 49
	OpSyncfs        Op = 50
	OpTmpfile       Op = 51
	OpStatx         Op = 52
)

var opNames = map[Op]string{
	OpLookup: "LOOKUP", OpForget: "FORGET", OpGetattr: "GETATTR", OpSetattr: "SETATTR",
	OpReadlink: "READLINK", OpSymlink: "SYMLINK", OpMknod: "MKNOD", OpMkdir: "MKDIR",
	OpUnlink: "UNLINK", OpRmdir: "RMDIR", OpRename: "RENAME", OpLink: "LINK",
	OpOpen: "OPEN", OpRead: "READ", OpWrite: "WRITE", OpStatfs: "STATFS",
	OpRelease: "RELEASE", OpFsync: "FSYNC", OpSetxattr: "SETXATTR", OpGetxattr: "GETXATTR",
	OpListxattr: "LISTXATTR", OpRemovexattr: "REMOVEXATTR", OpFlush: "FLUSH", OpInit: "INIT",
	OpOpendir: "OPENDIR", OpReaddir: "READDIR", OpReleasedir: "RELEASEDIR", OpFsyncdir: "FSYNCDIR",
	OpGetlk: "GETLK", OpSetlk: "SETLK", OpSetlkw: "SETLKW", OpAccess: "ACCESS",
	OpCreate: "CREATE", OpInterrupt: "INTERRUPT", OpBmap: "BMAP", OpDestroy: "DESTROY",
	OpIoctl: "IOCTL", OpPoll: "POLL", OpNotifyReply: "NOTIFY_REPLY", OpBatchForget: "BATCH_FORGET",
	OpFallocate: "FALLOCATE", OpReaddirplus: "READDIRPLUS", OpRename2: "RENAME2", OpLseek: "LSEEK",
	OpCopyFileRange: "COPY_FILE_RANGE", OpSetupmapping: "SETUPMAPPING", OpRemovemapping: "REMOVEMAPPING",
	OpSyncfs: "SYNCFS", OpTmpfile: "TMPFILE", OpStatx: "STATX",
}

// String returns the opcode's name without the FUSE_ prefix.
func (op Op) String() string {
	if n, ok := opNames[op]; ok {
		return n
	}
	return fmt.Sprintf("Op(%d)", uint32(op))
}

// noReply reports whether the kernel expects no answer to op: those
// requests can never be held.
func (op Op) noReply() bool {
	return op == OpForget || op == OpBatchForget || op == OpInterrupt || op == OpNotifyReply
}

// INIT flags (fuse_init_in.flags / fuse_init_out.flags) this server uses.
const (
	// initBigWrites lets one WRITE carry up to max_write bytes; without
	// it the kernel sends one page per WRITE.
	initBigWrites = 1 << 5
)

// FOPEN_* flags in fuse_open_out.open_flags.
const (
	fopenDirectIO = 1 << 0
)

// FATTR_* bits in fuse_setattr_in.valid.
const (
	fattrMode     = 1 << 0
	fattrUID      = 1 << 1
	fattrGID      = 1 << 2
	fattrSize     = 1 << 3
	fattrAtime    = 1 << 4
	fattrMtime    = 1 << 5
	fattrAtimeNow = 1 << 7
	fattrMtimeNow = 1 << 8
	fattrCtime    = 1 << 10
)

// inHeader is struct fuse_in_header (40 bytes), the start of every request.
type inHeader struct {
	Len         uint32
	Opcode      uint32
	Unique      uint64
	NodeID      uint64
	UID         uint32
	GID         uint32
	PID         uint32
	TotalExtlen uint16 // extensions, in 8-byte units, after the arguments
	Padding     uint16
}

// outHeader is struct fuse_out_header (16 bytes), the start of every reply.
type outHeader struct {
	Len    uint32
	Error  int32 // 0 or a negated errno
	Unique uint64
}

// attr is struct fuse_attr (88 bytes).
type attr struct {
	Ino       uint64
	Size      uint64
	Blocks    uint64
	Atime     uint64
	Mtime     uint64
	Ctime     uint64
	Atimensec uint32
	Mtimensec uint32
	Ctimensec uint32
	Mode      uint32
	Nlink     uint32
	UID       uint32
	GID       uint32
	Rdev      uint32
	Blksize   uint32
	Flags     uint32
}

// entryOut is struct fuse_entry_out (128 bytes), the reply to LOOKUP,
// MKNOD and the first half of the reply to CREATE.
type entryOut struct {
	NodeID         uint64
	Generation     uint64
	EntryValid     uint64
	AttrValid      uint64
	EntryValidNsec uint32
	AttrValidNsec  uint32
	Attr           attr
}

// attrOut is struct fuse_attr_out (104 bytes), the reply to GETATTR and SETATTR.
type attrOut struct {
	AttrValid     uint64
	AttrValidNsec uint32
	Dummy         uint32
	Attr          attr
}

// getattrIn is struct fuse_getattr_in (16 bytes).
type getattrIn struct {
	GetattrFlags uint32
	Dummy        uint32
	Fh           uint64
}

// setattrIn is struct fuse_setattr_in (88 bytes).
type setattrIn struct {
	Valid     uint32
	Padding   uint32
	Fh        uint64
	Size      uint64
	LockOwner uint64
	Atime     uint64
	Mtime     uint64
	Ctime     uint64
	Atimensec uint32
	Mtimensec uint32
	Ctimensec uint32
	Mode      uint32
	Unused4   uint32
	UID       uint32
	GID       uint32
	Unused5   uint32
}

// mknodIn is struct fuse_mknod_in (16 bytes), followed by the name.
type mknodIn struct {
	Mode    uint32
	Rdev    uint32
	Umask   uint32
	Padding uint32
}

// openIn is struct fuse_open_in (8 bytes), for OPEN and OPENDIR.
type openIn struct {
	Flags     uint32
	OpenFlags uint32
}

// createIn is struct fuse_create_in (16 bytes), followed by the name.
type createIn struct {
	Flags     uint32
	Mode      uint32
	Umask     uint32
	OpenFlags uint32
}

// openOut is struct fuse_open_out (16 bytes).
type openOut struct {
	Fh        uint64
	OpenFlags uint32
	Padding   uint32
}

// readIn is struct fuse_read_in (40 bytes), for READ and READDIR.
type readIn struct {
	Fh        uint64
	Offset    uint64
	Size      uint32
	ReadFlags uint32
	LockOwner uint64
	Flags     uint32
	Padding   uint32
}

// writeIn is struct fuse_write_in (40 bytes), followed by the data.
type writeIn struct {
	Fh         uint64
	Offset     uint64
	Size       uint32
	WriteFlags uint32
	LockOwner  uint64
	Flags      uint32
	Padding    uint32
}

// writeOut is struct fuse_write_out (8 bytes).
type writeOut struct {
	Size    uint32
	Padding uint32
}

// statfsOut is struct fuse_statfs_out (80 bytes), a struct fuse_kstatfs.
type statfsOut struct {
	Blocks  uint64
	Bfree   uint64
	Bavail  uint64
	Files   uint64
	Ffree   uint64
	Bsize   uint32
	Namelen uint32
	Frsize  uint32
	Padding uint32
	Spare   [6]uint32
}

// getxattrIn is struct fuse_getxattr_in (8 bytes), for GETXATTR (followed
// by the name) and LISTXATTR.
type getxattrIn struct {
	Size    uint32
	Padding uint32
}

// getxattrOut is struct fuse_getxattr_out (8 bytes): the size a buffer
// needs, the reply when the request's size is 0.
type getxattrOut struct {
	Size    uint32
	Padding uint32
}

// initIn is the part of struct fuse_init_in that every protocol 7.x
// kernel sends (16 bytes); 7.36 and later append flags2 and padding.
type initIn struct {
	Major        uint32
	Minor        uint32
	MaxReadahead uint32
	Flags        uint32
}

// initOut is struct fuse_init_out (64 bytes).
type initOut struct {
	Major               uint32
	Minor               uint32
	MaxReadahead        uint32
	Flags               uint32
	MaxBackground       uint16
	CongestionThreshold uint16
	MaxWrite            uint32
	TimeGran            uint32
	MaxPages            uint16
	MapAlignment        uint16
	Flags2              uint32
	Unused              [7]uint32
}

// direntHeader is the fixed part of struct fuse_dirent (24 bytes); the
// name follows and the record is padded to 8 bytes (FUSE_DIRENT_ALIGN).
type direntHeader struct {
	Ino     uint64
	Off     uint64
	Namelen uint32
	Type    uint32
}

// decode reads the fixed-size struct v from the front of b and returns
// the bytes after it.
func decode(b []byte, v any) ([]byte, error) {
	n, err := binary.Decode(b, binary.NativeEndian, v)
	if err != nil {
		return nil, fmt.Errorf("decode %T from %d bytes: %w", v, len(b), err)
	}
	return b[n:], nil
}

// encode appends the fixed-size structs vs to b.
func encode(b []byte, vs ...any) []byte {
	for _, v := range vs {
		var err error
		b, err = binary.Append(b, binary.NativeEndian, v)
		if err != nil {
			// Only a struct with a field that is not fixed-size fails,
			// which is a bug in this file.
			panic(fmt.Sprintf("testfuse: encode %T: %v", v, err))
		}
	}
	return b
}

// cstring returns the NUL-terminated name at the front of b.
func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}
