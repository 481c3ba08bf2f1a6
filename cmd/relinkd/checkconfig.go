package main

import (
	"context"
	"errors"
)

// TODO(issue): cmdCheckConfig is not built yet.
func cmdCheckConfig(ctx context.Context, e env, args []string) error {
	return errors.New("not implemented yet")
}
