package main

import (
	"context"
	"errors"
)

// TODO(issue): cmdRun is not built yet.
func cmdRun(ctx context.Context, e env, args []string) error {
	return errors.New("not implemented yet")
}
