// Package benchbin builds the relinkd binary that a benchmark runs, so that
// what is measured is the code in the tree, never a stale build.
package benchbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Build compiles ./cmd/relinkd (the benchmarks run from the repository
// root) into dir and returns the binary's path.
func Build(dir string) (string, error) {
	bin := filepath.Join(dir, "relinkd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/relinkd")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/relinkd (run from the repository root): %w", err)
	}
	return bin, nil
}
