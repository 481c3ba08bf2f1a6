// Package configs embeds relinkd's documented example configuration, which
// is also the default the daemon runs with when no file is given.
package configs

import _ "embed"

//go:embed relinkd.yaml
var defaultYAML []byte

// Default returns a copy of the embedded configs/relinkd.yaml.
func Default() []byte { return append([]byte(nil), defaultYAML...) }
