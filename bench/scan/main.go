// Command scan benchmarks `relinkd scan` against lsof +L1 and a find
// one-liner on the same live state: N holder processes with M descriptors
// each, a share of them deleted. Run as root: go run ./bench/scan
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/relinkd/relinkd/internal/benchbin"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/scan:", err)
		os.Exit(1)
	}
}

func run() error {
	procs := flag.Int("procs", 500, "holder processes")
	fds := flag.Int("fds", 100, "descriptors per holder")
	pct := flag.Int("deleted", 5, "percent of descriptors whose file is deleted")
	rounds := flag.Int("rounds", 7, "timed rounds per tool (alternating)")
	bin := flag.String("bin", "", "relinkd binary (default: go build ./cmd/relinkd into a temp dir)")
	flag.Parse()

	dir, err := os.MkdirTemp("", "relinkd-bench-scan-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if *bin == "" {
		if *bin, err = benchbin.Build(dir); err != nil {
			return err
		}
	} else if _, err := os.Stat(*bin); err != nil {
		return fmt.Errorf("-bin %s: %w", *bin, err)
	}
	holders, err := startHolders(dir, *procs, *fds, *pct)
	defer func() {
		for _, h := range holders {
			_ = h.Process.Kill()
			_ = h.Wait()
		}
	}()
	if err != nil {
		return err
	}
	wantDeleted := *procs * (*fds * *pct / 100)
	fmt.Printf("state: %d holders x %d descriptors, %d deleted-but-open files\n", *procs, *fds, wantDeleted)

	tools := []struct {
		name string
		cmd  []string
	}{
		{"relinkd scan --all --json", []string{*bin, "scan", "--all", "--json"}},
		{"lsof +L1 -nP", []string{"lsof", "+L1", "-nP"}},
		{"find /proc/[0-9]*/fd -lname '*(deleted)'", []string{"sh", "-c", "find /proc/[0-9]*/fd -lname '*(deleted)' 2>/dev/null"}},
	}
	times := make([][]time.Duration, len(tools))
	for r := 0; r < *rounds; r++ {
		for i, tool := range tools {
			d, lines, err := timeCmd(tool.cmd)
			if err != nil {
				return fmt.Errorf("%s: %w", tool.name, err)
			}
			if lines < wantDeleted {
				return fmt.Errorf("%s printed %d lines, want at least %d", tool.name, lines, wantDeleted)
			}
			times[i] = append(times[i], d)
		}
	}
	med := make([]time.Duration, len(tools))
	for i := range tools {
		med[i] = median(times[i])
	}
	fmt.Printf("%-45s %12s %10s\n", "command", "median", "vs relinkd")
	for i, tool := range tools {
		fmt.Printf("%-45s %12s %9.2fx\n", tool.name, med[i].Round(time.Microsecond), float64(med[i])/float64(med[0]))
	}
	fmt.Printf("relinkd is %.1fx faster than lsof +L1 (target >= 5x) and %.2fx the speed of find (target >= 1x)\n",
		float64(med[1])/float64(med[0]), float64(med[2])/float64(med[0]))
	return nil
}

// startHolders starts procs bash processes, each holding fds files open,
// pct percent of them deleted, then replacing itself with sleep (which
// inherits the descriptors).
func startHolders(dir string, procs, fds, pct int) ([]*exec.Cmd, error) {
	var holders []*exec.Cmd
	del := fds * pct / 100
	for p := 0; p < procs; p++ {
		var script strings.Builder
		for f := 0; f < fds; f++ {
			name := filepath.Join(dir, fmt.Sprintf("h%d-f%d", p, f))
			if err := os.WriteFile(name, []byte("data\n"), 0o644); err != nil {
				return holders, err
			}
			fmt.Fprintf(&script, "exec %d<'%s'\n", f+3, name)
		}
		for f := 0; f < del; f++ {
			fmt.Fprintf(&script, "rm '%s'\n", filepath.Join(dir, fmt.Sprintf("h%d-f%d", p, f)))
		}
		script.WriteString("echo ready\nexec sleep 100000\n")
		cmd := exec.Command("bash", "-c", script.String())
		out, err := cmd.StdoutPipe()
		if err != nil {
			return holders, err
		}
		if err := cmd.Start(); err != nil {
			return holders, err
		}
		holders = append(holders, cmd)
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || line != "ready\n" {
			return holders, fmt.Errorf("holder %d: %q %v", p, line, err)
		}
	}
	return holders, nil
}

// timeCmd runs cmd and returns its wall time and the lines it printed.
func timeCmd(argv []string) (time.Duration, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout = &out
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	var exit *exec.ExitError
	if errors.As(err, &exit) && !strings.HasSuffix(argv[0], "relinkd") {
		err = nil // lsof and find exit 1 when some process may not be read (pid 1 in a container)
	}
	return d, bytes.Count(out.Bytes(), []byte{'\n'}), err
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
