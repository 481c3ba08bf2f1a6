package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	flag "github.com/spf13/pflag"
)

// newFlagSet returns the flag set of a subcommand. Flags may stand before
// or after positional arguments (`GLOB --json`), and "--" ends them, so a
// glob may start with '-' (github.com/spf13/pflag's grammar). It prints
// nothing itself: parseArgs returns mistakes (main prints them with the
// usage) and prints the help that -h asks for.
func newFlagSet(name string) *flag.FlagSet {
	fl := flag.NewFlagSet(name, flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	fl.SortFlags = false
	return fl
}

// parseArgs parses fl's flags wherever they stand in args and returns the
// positional arguments in order. On -h or --help it prints the usage
// (synopsis, then the flags) to w and returns flag.ErrHelp; any other
// mistake is an errUsage.
func parseArgs(w io.Writer, fl *flag.FlagSet, synopsis string, args []string) ([]string, error) {
	err := fl.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(w, fl, synopsis)
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errUsage, fl.Name(), err)
	}
	return fl.Args(), nil
}

// printHelp prints "usage: relinkd NAME SYNOPSIS" and the flags, if any.
func printHelp(w io.Writer, fl *flag.FlagSet, synopsis string) {
	fmt.Fprintln(w, strings.TrimSpace("usage: relinkd "+fl.Name()+" "+synopsis))
	n := 0
	fl.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return
	}
	fmt.Fprintln(w, "\nflags:")
	fl.SetOutput(w)
	fl.PrintDefaults()
	fl.SetOutput(io.Discard)
}
