// Package layout names what relinkd writes inside a rescue root, so the
// engine that writes it and the retention that prunes it agree.
package layout

import "strings"

// SidecarSuffix ends the name of the JSON file beside each rescued file.
const SidecarSuffix = ".relinkd.json"

// TempMarker is part of every hidden temporary name the engine creates
// where O_TMPFILE is not available: ".LEAF.relinkd-tmp-HEX" or
// ".relinkd-tmp-HEX".
const TempMarker = ".relinkd-tmp-"

// IsTemp reports whether name (a base name) is one of the engine's
// hidden temporary files, which a crash can leave behind.
func IsTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, TempMarker)
}
