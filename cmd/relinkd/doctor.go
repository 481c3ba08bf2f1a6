package main

import (
	"context"
	"errors"
)

// TODO(issue): cmdDoctor is not built yet.
func cmdDoctor(ctx context.Context, e env, args []string) error {
	return errors.New("not implemented yet")
}
