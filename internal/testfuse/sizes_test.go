package testfuse

import (
	"encoding/binary"
	"testing"
)

// TestSizes checks every wire struct against sizeof in
// include/uapi/linux/fuse.h: a wrong size is a protocol error the kernel
// answers with EINVAL, or worse, a misread field.
func TestSizes(t *testing.T) {
	tests := []struct {
		name string
		v    any
		want int
	}{
		{"fuse_in_header", inHeader{}, 40},
		{"fuse_out_header", outHeader{}, 16},
		{"fuse_attr", attr{}, 88},
		{"fuse_entry_out", entryOut{}, 128},
		{"fuse_attr_out", attrOut{}, 104},
		{"fuse_getattr_in", getattrIn{}, 16},
		{"fuse_setattr_in", setattrIn{}, 88},
		{"fuse_mknod_in", mknodIn{}, 16},
		{"fuse_open_in", openIn{}, 8},
		{"fuse_create_in", createIn{}, 16},
		{"fuse_open_out", openOut{}, 16},
		{"fuse_read_in", readIn{}, 40},
		{"fuse_write_in", writeIn{}, 40},
		{"fuse_write_out", writeOut{}, 8},
		{"fuse_statfs_out", statfsOut{}, 80},
		{"fuse_getxattr_in", getxattrIn{}, 8},
		{"fuse_getxattr_out", getxattrOut{}, 8},
		{"fuse_init_in (7.x prefix)", initIn{}, 16},
		{"fuse_init_out", initOut{}, 64},
		{"fuse_dirent (fixed part)", direntHeader{}, 24},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := binary.Size(tc.v); got != tc.want {
				t.Errorf("binary.Size(%T) = %d, want %d", tc.v, got, tc.want)
			}
		})
	}
}
