// Command relinkd finds files that were deleted while a process still holds
// them open and gives their data a name again. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	flag "github.com/spf13/pflag"
)

// Set by the linker (see Makefile).
var (
	version = "dev"
	commit  = "unknown"
)

const usage = `usage: relinkd COMMAND [FLAGS]

commands:
  run          [--config FILE]                      the daemon (foreground)
  scan         [--config FILE] [--all] [--json]     list deleted-but-open files
  rescue       [--config FILE] [--to DIR] [--pid PID] [--fd N] [--json]
               [--follow] [--] [GLOB…]              rescue matching files now
  check-config FILE                                 validate a configuration
  doctor       [--config FILE]                      what will work on this host
  list         [--config FILE] [--json] [--since DURATION] [--] [GLOB…]
                                                    rescued files, from their sidecars
  restore      [--config FILE] [--to PATH] [--force] [--dry-run] [--json]
               [--] RESCUED_OR_GLOB…                put rescued files back
  version                                           version, commit, Go version

Container mode: run, scan, rescue, doctor, list and restore take
--host-root DIR when the host's root is mounted at DIR (a DaemonSet's /host).
Flags may come before or after positional arguments; COMMAND -h shows them.
`

// errUsage marks a command-line mistake: main prints the usage and exits 2.
var errUsage = errors.New("usage")

// errReported marks a failure the command has already explained on its
// output (doctor's problems): main exits 1 without repeating it.
var errReported = errors.New("problems reported")

// env is what a command needs from the outside world; tests swap it.
type env struct {
	stdout, stderr io.Writer
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := dispatch(ctx, env{stdout: os.Stdout, stderr: os.Stderr}, os.Args[1:])
	stop()
	switch {
	case err == nil:
	case errors.Is(err, errReported):
		os.Exit(1)
	case errors.Is(err, errUsage):
		fmt.Fprintf(os.Stderr, "relinkd: %v\n\n%s", err, usage)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "relinkd: %v\n", err)
		os.Exit(1)
	}
}

// dispatch runs the command args name. Help asked for with -h is not an
// error: the command printed it and main exits 0.
func dispatch(ctx context.Context, e env, args []string) error {
	err := command(ctx, e, args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

func command(ctx context.Context, e env, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command", errUsage)
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return cmdRun(ctx, e, rest)
	case "scan":
		return cmdScan(ctx, e, rest)
	case "rescue":
		return cmdRescue(ctx, e, rest)
	case "check-config":
		return cmdCheckConfig(ctx, e, rest)
	case "doctor":
		return cmdDoctor(ctx, e, rest)
	case "list":
		return cmdList(ctx, e, rest)
	case "restore":
		return cmdRestore(ctx, e, rest)
	case "version":
		return cmdVersion(e, rest)
	case "help", "-h", "--help":
		fmt.Fprint(e.stdout, usage)
		return nil
	}
	return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
}
