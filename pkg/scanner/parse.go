package scanner

import "bytes"

// deletedSuffix is what d_path(3) appends to a name that was unlinked
// (fs/d_path.c, prepend_unreachable/d_unlinked).
var deletedSuffix = []byte(" (deleted)")

// memfdPrefix is how memfd_create(2) files read back through readlink.
var memfdPrefix = []byte("/memfd:")

// secretmemName is how memfd_secret(2) files read back through readlink.
var secretmemName = []byte("/secretmem")

// onInternalMount reports whether path is how an anonymous in-kernel file
// reads back: a memfd or a secretmem file, both regular files on a mount
// that no mountinfo lists. A real file of that name is on a listed mount,
// which the caller checks.
func onInternalMount(path []byte) bool {
	return bytes.HasPrefix(path, memfdPrefix) || bytes.Equal(path, secretmemName)
}

// trimDeleted returns the link text without the " (deleted)" suffix and
// whether the suffix was there. Only absolute paths qualify: pipes, sockets
// and anonymous inodes read back as "pipe:[N]", "socket:[N]",
// "anon_inode:[…]" and never carry the suffix with a leading slash.
func trimDeleted(link []byte) ([]byte, bool) {
	if len(link) == 0 || link[0] != '/' || !bytes.HasSuffix(link, deletedSuffix) {
		return link, false
	}
	return link[:len(link)-len(deletedSuffix)], true
}
