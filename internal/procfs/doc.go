// Package procfs is relinkd's one reader of proc(5).
//
// Parsing is separate from reading: the Parse functions take the bytes of
// a pseudo-file and are tested without any filesystem, on literals and on
// the testdata/proc fixture tree.
package procfs
