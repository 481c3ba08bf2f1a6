package main

import (
	"fmt"
	"runtime"
)

func cmdVersion(e env) error {
	_, err := fmt.Fprintf(e.stdout, "relinkd %s (commit %s, %s %s/%s)\n", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return err
}
