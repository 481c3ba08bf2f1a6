package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/probe"
	"github.com/relinkd/relinkd/internal/procfs"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/mounts"
	"github.com/relinkd/relinkd/pkg/policy"
	"github.com/relinkd/relinkd/pkg/relink"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// cmdDoctor tells an operator what will work on this host: capabilities,
// kernel features, how paths are resolved, and per filesystem that a watch
// rule covers its type, whether reflink works there (probed for real), free
// space, where the policy would rescue files and whether that root exists
// and can be written. It exits non-zero when it finds a problem.
func cmdDoctor(ctx context.Context, e env, args []string) error {
	fl := newFlagSet("doctor")
	configPath := fl.String("config", "", "configuration `file` (default /etc/relinkd/relinkd.yaml, else embedded)")
	var hf hostFlags
	hf.add(fl)
	pos, err := parseArgs(e.stdout, fl, "[FLAGS]", args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: doctor takes no arguments", errUsage)
	}
	mode, err := hf.resolve(fl)
	if err != nil {
		return err
	}
	cfg, source, err := config.Resolve(*configPath)
	if err != nil {
		return err
	}
	p := policy.New(cfg, zap.NewNop(), mode.policyOptions()...)
	host, err := p.Host().Mounts()
	if err != nil {
		return err
	}
	w := e.stdout
	problems := 0
	fmt.Fprintf(w, "configuration: %s\n", source)
	fmt.Fprintf(w, "host paths:    %s\n\n", p.Host().Describe())

	fmt.Fprintln(w, "capabilities")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	caps, err := procfs.FS{}.EffectiveCaps("self")
	if err != nil {
		fmt.Fprintf(tw, "  ?\t%v\n", err)
		problems++
	}
	for _, c := range probe.Capabilities() {
		state := "held"
		if caps&(1<<c.Bit) == 0 {
			state = "MISSING"
			problems++
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", c.Name, state, c.Why)
	}
	tw.Flush()

	fmt.Fprintln(w, "\nkernel features")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	probeDir := existingDir(firstOr(cfg.Rescue.Dirs, os.TempDir()))
	if mode.hostRoot != "" {
		// Container mode: the rescue roots are the host's, below the
		// host root (the container's own root is often read-only).
		probeDir = p.Host().Via() + existingHostDir(p, firstOr(cfg.Rescue.Dirs, "/tmp"))
	}
	for _, f := range []struct {
		name, why string
		err       error
		problem   bool // a "no" here is a problem
	}{
		{"O_TMPFILE", "unnamed temp file, published atomically (in " + probeDir + ")", probe.TmpFile(probeDir), true},
		{"pidfd_open", "holder identity without PID reuse races", probe.Pidfd(), true},
	} {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", f.name, verdict(f.err), f.why)
		if f.err != nil && f.problem {
			problems++
		}
	}
	// A refused openat2 is no problem: the component walk gives the same
	// guarantees. Under the shipped unit RestrictSUIDSGID=yes refuses it.
	if err := relink.ProbeOpenat2(); err == nil {
		fmt.Fprintf(tw, "  openat2\tyes\trescue paths resolved with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS (refused under the shipped unit: the daemon then walks component by component)\n")
	} else {
		fmt.Fprintf(tw, "  openat2\t%s\trescue paths resolved one component at a time with O_NOFOLLOW (as safe; openat2 is refused here, e.g. by a seccomp filter)\n", verdict(err))
	}
	// Loading the BPF sweep is the only test of whether it runs here
	// (kernel, BTF, capabilities, a seccomp filter on bpf(2)).
	sc := scanner.New(scanner.Options{Backend: cfg.Scan.Backend}, zap.NewNop())
	backend, why := sc.Backend()
	sc.Close()
	fmt.Fprintf(tw, "  sweep\t%s\tscan.backend %s: %s\n", backend, cfg.Scan.Backend, why)
	tw.Flush()

	fmt.Fprintln(w, "\nfilesystems covered by watch rules")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  MOUNT\tTYPE\tFREE\tREFLINK\tRESCUE TO\tROOT\tRULES")
	// The mounts are the host's: look them up as PID 1 sees them when
	// relinkd's namespace is another.
	pid := os.Getpid()
	if p.Host().Via() != "" {
		pid = 1
	}
	for _, cm := range mounts.Covered(cfg, host) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		m := cm.Mount
		free := "?"
		if avail, total, err := p.Host().FreeSpace(m.MountPoint); err == nil && total > 0 {
			free = fmt.Sprintf("%s of %s (%d%%)", humanBytes(avail), humanBytes(total), avail*100/total)
			if avail < cfg.Rescue.MinFree.Floor(total) {
				free += " below min_free"
				problems++
			}
		}
		c := &scanner.Candidate{PID: pid, MntID: m.ID, Dev: unix.Mkdev(m.Major, m.Minor),
			Path: []byte(filepath.Join(m.MountPoint, "x"))}
		if mode.hostRoot != "" {
			// Container mode lists relinkd's own copies of the host's
			// mounts; a holder's file is on the host's mount, never on
			// one of them (so link cannot work), and is placed by device.
			c.MntID = 0
		}
		loc, lerr := p.Host().Locate(c)
		var where, root string
		if lerr == nil {
			where = loc.Root + " (" + describe(loc) + ")"
			switch exists, err := probe.RootState(p.Host().Via(), loc.Root); {
			case err != nil:
				root = "NOT WRITABLE: " + err.Error()
				problems++
			case exists:
				root = "exists, writable"
			default:
				root = "created at first rescue"
			}
		} else {
			where, root = "none: "+reasonOf(lerr), "-"
			problems++
		}
		reflink := "n/a"
		switch {
		case m.ReadOnly():
			reflink = "read-only"
		case lerr == nil && loc.SameFS:
			reflink = verdict(probe.Reflink(p.Host().Via() + existingHostDir(p, loc.Root)))
		case lerr != nil || !loc.SameFS:
			reflink = verdict(probe.Reflink(p.Host().Via() + m.MountPoint))
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.MountPoint, m.FSType, free, reflink, where, root, strings.Join(cm.Rules, ", "))
	}
	tw.Flush()
	// A container's files go elsewhere (rescue.containers).
	if cfg.Rescue.Containers == config.ContainersInside {
		fmt.Fprintf(w, "\ncontainers' files: inside each container (%s at the root of the file's mount, in the container's view)\n", cfg.Rescue.FSDir)
	} else {
		d, state := cfg.Rescue.ContainerDir, "created at first rescue"
		switch exists, err := probe.RootState(p.Host().Via(), d); {
		case err != nil:
			state = "NOT WRITABLE: " + err.Error()
			problems++
		case exists:
			state = "exists, writable"
		}
		fmt.Fprintf(w, "\ncontainers' files: %s, one directory per container (%s)\n", d, state)
	}
	if problems == 0 {
		fmt.Fprintln(w, "\nno problems found")
		return nil
	}
	fmt.Fprintf(w, "\n%d problem(s) found (MISSING, no, none, NOT WRITABLE, below min_free above)\n", problems)
	return errReported
}

// existingHostDir is existingDir for a host path.
func existingHostDir(p *policy.Policy, dir string) string {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if st, err := os.Stat(p.Host().Via() + d); err == nil && st.IsDir() || d == "/" {
			return d
		}
	}
}

func firstOr(xs []string, def string) string {
	if len(xs) > 0 {
		return xs[0]
	}
	return def
}

// existingDir returns dir or its nearest existing ancestor: doctor probes
// there without creating anything.
func existingDir(dir string) string {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if st, err := os.Stat(d); err == nil && st.IsDir() || d == "/" {
			return d
		}
	}
}

func verdict(err error) string {
	if err == nil {
		return "yes"
	}
	var errno unix.Errno
	if errors.As(err, &errno) {
		return "no (" + unix.ErrnoName(errno) + ")"
	}
	return "no (" + err.Error() + ")"
}

// reasonOf is the part of a Locate error that says why, without the
// made-up candidate's pid and fd.
func reasonOf(err error) string {
	msg := strings.TrimSuffix(err.Error(), ": "+mounts.ErrNoLocation.Error())
	if i := strings.Index(msg, "): "); i >= 0 && strings.HasPrefix(msg, "pid ") {
		msg = msg[i+3:]
	}
	return msg
}

func describe(l mounts.Location) string {
	switch {
	case l.Kind == mounts.KindCrossFS:
		return "other filesystem: copy only"
	case l.SameMount:
		return l.Kind + ", same mount: link, reflink, copy"
	default:
		return l.Kind + ", same filesystem: reflink, copy"
	}
}

// humanBytes formats n with a binary unit and one decimal.
func humanBytes(n uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return strconv.FormatUint(n, 10) + "B"
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + units[i]
}
