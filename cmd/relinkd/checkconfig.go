package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/relinkd/relinkd/pkg/config"
)

// cmdCheckConfig validates a configuration file. It prints "ok" and the
// effective configuration (every default filled in) on stdout, or every
// error, one "FILE:LINE: FIELD: message" per line, on stderr and fails.
func cmdCheckConfig(ctx context.Context, e env, args []string) error {
	fl := newFlagSet("check-config")
	pos, err := parseArgs(e.stdout, fl, "FILE", args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: check-config takes one FILE", errUsage)
	}
	file := pos[0]
	cfg, err := config.Load(file)
	var es config.Errors
	if errors.As(err, &es) {
		for _, fe := range es {
			fmt.Fprintln(e.stderr, fe)
		}
		return fmt.Errorf("%s: %d error(s)", file, len(es))
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "ok")
	fmt.Fprintf(e.stdout, "# effective configuration of %s, defaults filled in\n", file)
	_, err = e.stdout.Write(cfg.YAML())
	return err
}
