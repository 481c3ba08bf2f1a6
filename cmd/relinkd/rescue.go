package main

import (
	"context"
	"errors"
)

// TODO(issue): cmdRescue is not built yet.
func cmdRescue(ctx context.Context, e env, args []string) error {
	return errors.New("not implemented yet")
}
