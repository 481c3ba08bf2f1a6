package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// newFlagSet returns the flag set of a subcommand. It prints nothing
// itself: parseArgs returns mistakes (main prints them with the usage)
// and prints the help that -h asks for.
func newFlagSet(name string) *flag.FlagSet {
	fl := flag.NewFlagSet(name, flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	return fl
}

// parseArgs parses fl's flags wherever they stand in args and returns the
// positional arguments in order. flag.FlagSet.Parse alone stops at the
// first positional argument, which would turn `GLOB --json` into two
// globs. Everything after "--" is positional, so a glob may start with
// '-'. On -h or --help it prints the usage (synopsis, then the flags) to w
// and returns flag.ErrHelp; any other mistake is an errUsage.
func parseArgs(w io.Writer, fl *flag.FlagSet, synopsis string, args []string) ([]string, error) {
	flags, pos := splitArgs(fl, args)
	err := fl.Parse(flags)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(w, fl, synopsis)
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errUsage, fl.Name(), err)
	}
	return pos, nil
}

// splitArgs separates flags (with the values they take) from positional
// arguments, with the grammar of flag.FlagSet.Parse: "-" alone and words
// not starting with '-' are positional, "--" ends the flags, and a flag
// without "=" that is not boolean takes the next argument as its value
// (so `--to --` and `--pid -1` are values). Unknown flags go to Parse,
// which reports them.
func splitArgs(fl *flag.FlagSet, args []string) (flags, pos []string) {
	for i := 0; i < len(args); i++ {
		s := args[i]
		switch {
		case s == "--":
			return flags, append(pos, args[i+1:]...)
		case len(s) < 2 || s[0] != '-':
			pos = append(pos, s)
		default:
			flags = append(flags, s)
			if takesValue(fl, s) && i+1 < len(args) {
				i++
				flags = append(flags, args[i])
			}
		}
	}
	return flags, pos
}

// takesValue reports whether the flag argument s ("-x", "--x", "--x=v")
// consumes the next argument as its value.
func takesValue(fl *flag.FlagSet, s string) bool {
	name := strings.TrimPrefix(strings.TrimPrefix(s, "-"), "-")
	if strings.Contains(name, "=") {
		return false
	}
	f := fl.Lookup(name)
	if f == nil {
		return false
	}
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return !ok || !b.IsBoolFlag()
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
