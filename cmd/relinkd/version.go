package main

import (
	"fmt"
	"runtime"
)

func cmdVersion(e env, args []string) error {
	fl := newFlagSet("version")
	pos, err := parseArgs(e.stdout, fl, "", args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: version takes no arguments", errUsage)
	}
	_, err = fmt.Fprintf(e.stdout, "relinkd %s (commit %s, %s %s/%s)\n", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return err
}
