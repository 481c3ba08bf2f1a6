// Package eintr retries system calls interrupted by a signal (EINTR).
// Go's runtime preempts goroutines with signals, so any blocking syscall
// made directly through x/sys/unix may return EINTR; see signal(7).
package eintr

import (
	"errors"

	"golang.org/x/sys/unix"
)

// Retry calls f until it returns something other than EINTR.
func Retry[T any](f func() (T, error)) (T, error) {
	for {
		v, err := f()
		if !errors.Is(err, unix.EINTR) {
			return v, err
		}
	}
}

// Retry0 is Retry for calls that return only an error.
func Retry0(f func() error) error {
	_, err := Retry(func() (struct{}, error) { return struct{}{}, f() })
	return err
}
