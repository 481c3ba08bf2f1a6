// Command relink benchmarks the relink engine on real filesystems:
// rescuing a 1 GiB deleted file by reflink on XFS and btrfs (target: under
// 20 ms), and by copy on ext4 next to `cp --sparse=auto /proc/PID/fd/N`
// (target: time ratio at most 1.1). It needs root: it creates loop-mounted
// images under a temporary directory and removes them when it ends.
//
// Every case runs on two kinds of loop device. "dio" opens the image with
// O_DIRECT, so the writes a filesystem submits reach the disk when they
// are submitted, as on a real block device; the targets are read off
// these rows. "buffered" goes through the host's page cache, which holds
// every write back until the final flush: an fsync then pays for the
// whole file at once, however early its writeback was started.
//
//	go run ./bench/relink [-runs 7] [-size MiB] [-dir /var/tmp] [-fs xfs,btrfs,ext4] [-loop dio,buffered]
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/pkg/relink"
	"github.com/relinkd/relinkd/pkg/scanner"
)

const holderEnv = "RELINKD_BENCH_HOLDER"

func main() {
	if path, ok := os.LookupEnv(holderEnv); ok {
		os.Exit(hold(path))
	}
	runs := flag.Int("runs", 7, "measured runs per case (median reported)")
	sizeMiB := flag.Int("size", 1024, "size of the deleted file in MiB")
	base := flag.String("dir", "/var/tmp", "where the loop images go")
	fss := flag.String("fs", "xfs,btrfs,ext4", "filesystems to run, comma-separated")
	loops := flag.String("loop", "dio,buffered", "loop device modes to run, comma-separated: dio (image opened with O_DIRECT, as a disk) or buffered (through the host's page cache)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench/relink: needs root (it mounts loop images)")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, *runs, int64(*sizeMiB)<<20, *base, strings.Split(*fss, ","), strings.Split(*loops, ","))
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/relink:", err)
		os.Exit(1)
	}
}

// hold is the holder process: it opens path, unlinks it, says which fd
// holds it and waits for its stdin to close.
func hold(path string) int {
	fd, err := unix.Open(path, unix.O_RDONLY, 0)
	if err == nil {
		err = unix.Unlink(path)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "holder:", err)
		return 1
	}
	fmt.Printf("ready %d\n", fd)
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	return 0
}

type row struct {
	fs, what string
	times    []time.Duration
	note     string
}

func run(ctx context.Context, runs int, size int64, base string, fss, loops []string) error {
	work, err := os.MkdirTemp(base, "relinkd-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	var rows []row
	for _, loop := range loops {
		if loop != "dio" && loop != "buffered" {
			return fmt.Errorf("loop mode %q: want dio or buffered", loop)
		}
		for _, fs := range fss {
			if err := ctx.Err(); err != nil {
				return err
			}
			r, err := benchFS(ctx, work, fs, loop, runs, size)
			if err != nil {
				return fmt.Errorf("%s (%s loop): %w", fs, loop, err)
			}
			rows = append(rows, r...)
		}
	}
	printTable(rows, size)
	return nil
}

// benchFS mounts a fresh fstype image, writes a file of size bytes of
// non-zero data, has a holder process open and unlink it, and times the
// rescues.
func benchFS(ctx context.Context, work, fstype, loop string, runs int, size int64) ([]row, error) {
	// Room to spare: once free space falls below twice the dirty data,
	// ext4 forces writeback of delayed allocations and cp waits for it
	// (ext4_nonda_switch), which would slow cp for a reason a server with
	// room to spare does not have.
	mnt, cleanup, err := mount(work, fstype, loop == "dio", 4*size+(1<<30))
	if err != nil {
		return nil, err
	}
	defer cleanup()
	src := filepath.Join(mnt, "app.log")
	if err := writeData(src, size); err != nil {
		return nil, err
	}
	holder, c, err := startHolder(ctx, src)
	if err != nil {
		return nil, err
	}
	defer holder()
	eng := relink.New(relink.Options{}, zap.NewNop())
	root := filepath.Join(mnt, ".relinkd")
	var pins, rescues []time.Duration
	var method relink.Method
	rescueOnce := func(i int) error {
		unix.Sync()
		t0 := time.Now()
		p, err := eng.Pin(c)
		if err != nil {
			return err
		}
		t1 := time.Now()
		rs, err := eng.Rescue(ctx, p, relink.Destination{Root: root, Rel: "app.log." + strconv.Itoa(i)})
		t2 := time.Now()
		p.Close()
		if err != nil {
			return err
		}
		res := rs.Result()
		if res.Bytes != size {
			return fmt.Errorf("rescued %d bytes, want %d", res.Bytes, size)
		}
		pins, rescues, method = append(pins, t1.Sub(t0)), append(rescues, t2.Sub(t1)), res.Method
		return os.Remove(res.Path)
	}
	procPath := "/proc/" + strconv.Itoa(c.PID) + "/fd/" + strconv.Itoa(c.FD)
	var cps, cpSyncs, fsyncs []time.Duration
	cpOnce := func(i int) error {
		// Into the engine's directory: ext4 places a new top-level
		// directory in its own block group, so another directory would
		// write to another region of the image.
		dst := filepath.Join(root, "cp."+strconv.Itoa(i))
		unix.Sync()
		t0 := time.Now()
		if out, err := exec.CommandContext(ctx, "cp", "--sparse=auto", procPath, dst).CombinedOutput(); err != nil {
			return fmt.Errorf("cp: %v: %s", err, out)
		}
		t1 := time.Now()
		// The engine fsyncs what it publishes; cp does not. Time the
		// same durability for cp with sync(1) on the file (fsync(2)).
		if out, err := exec.CommandContext(ctx, "sync", dst).CombinedOutput(); err != nil {
			return fmt.Errorf("sync: %v: %s", err, out)
		}
		t2 := time.Now()
		cps, cpSyncs, fsyncs = append(cps, t1.Sub(t0)), append(cpSyncs, t2.Sub(t0)), append(fsyncs, t2.Sub(t1))
		return os.Remove(dst)
	}
	// One warm-up of each, unmeasured, so that both start from the same
	// cache state: the source in the page cache, as for a file just written.
	if err := rescueOnce(-1); err != nil {
		return nil, err
	}
	pins, rescues = nil, nil
	withCP := fstype == "ext4"
	if withCP {
		if err := cpOnce(-1); err != nil {
			return nil, err
		}
		cps, cpSyncs, fsyncs = nil, nil, nil
	}
	for i := 0; i < runs; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := rescueOnce(i); err != nil {
			return nil, err
		}
		if withCP {
			if err := cpOnce(i); err != nil {
				return nil, err
			}
		}
	}
	label := fstype + " (" + loop + " loop)"
	rows := []row{
		{fs: label, what: "pin", times: pins},
		{fs: label, what: "rescue (" + string(method) + ")", times: rescues},
	}
	if withCP {
		r := float64(median(rescues)) / float64(median(cpSyncs))
		rows[1].note = fmt.Sprintf("ratio to cp+fsync %.2f", r)
		rows = append(rows,
			row{fs: label, what: "cp --sparse=auto + fsync", times: cpSyncs,
				note: fmt.Sprintf("of which fsync %s", round(median(fsyncs)))},
			row{fs: label, what: "cp --sparse=auto (no fsync)", times: cps,
				note: fmt.Sprintf("rescue / cp %.2f", float64(median(rescues))/float64(median(cps)))})
	} else {
		rows[1].note = "target < 20ms"
	}
	return rows, nil
}

// mount creates an allocated image of size bytes, formats it as fstype, attaches
// it to a loop device (with O_DIRECT if directIO) and mounts it; cleanup
// unmounts, detaches and removes it.
func mount(work, fstype string, directIO bool, size int64) (string, func(), error) {
	img := filepath.Join(work, fstype+".img")
	mnt := filepath.Join(work, fstype)
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return "", nil, err
	}
	f, err := os.Create(img)
	if err == nil {
		// Allocated, not sparse: writes into a hole of the image would
		// add the host filesystem's block allocation to every fsync.
		err = unix.Fallocate(int(f.Fd()), 0, 0, size)
		f.Close()
	}
	if err != nil {
		return "", nil, err
	}
	var mkfs *exec.Cmd
	switch fstype {
	case "xfs":
		mkfs = exec.Command("mkfs.xfs", "-q", "-f", "-m", "reflink=1", img)
	case "btrfs":
		mkfs = exec.Command("mkfs.btrfs", "-q", "-f", img)
	case "ext4":
		mkfs = exec.Command("mkfs.ext4", "-q", "-F", img)
	default:
		os.Remove(img)
		return "", nil, fmt.Errorf("no image for filesystem %q: want xfs, btrfs or ext4", fstype)
	}
	if out, err := mkfs.CombinedOutput(); err != nil {
		os.Remove(img)
		return "", nil, fmt.Errorf("%v: %v: %s", mkfs.Args, err, out)
	}
	dio := "--direct-io=off"
	if directIO {
		dio = "--direct-io=on"
	}
	out, err := exec.Command("losetup", "--find", "--show", dio, img).Output()
	if err != nil {
		os.Remove(img)
		return "", nil, fmt.Errorf("losetup %s: %v", img, err)
	}
	dev := strings.TrimSpace(string(out))
	args := []string{dev, mnt}
	if fstype == "ext4" {
		// No background zeroing of inode tables competing with the
		// measured writes.
		args = append(args, "-o", "noinit_itable")
	}
	if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
		_ = exec.Command("losetup", "-d", dev).Run()
		os.Remove(img)
		return "", nil, fmt.Errorf("mount %s: %v: %s", img, err, out)
	}
	cleanup := func() {
		for i := 0; ; i++ {
			err := exec.Command("umount", mnt).Run()
			if err == nil {
				break
			}
			if i == 20 {
				_ = exec.Command("umount", "-l", mnt).Run()
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		_ = exec.Command("losetup", "-d", dev).Run()
		os.Remove(img)
		os.Remove(mnt)
	}
	return mnt, cleanup, nil
}

// writeData writes size bytes of pseudo-random data (real, non-zero
// extents, nothing a filesystem could compress or skip) and fsyncs them,
// as for a log file whose data already reached the disk.
func writeData(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		for i := 0; i+8 <= len(buf); i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], r.Uint64()|1)
		}
		n := min(int64(len(buf)), size-off)
		if _, err := f.Write(buf[:n]); err != nil {
			return err
		}
	}
	return f.Sync()
}

// startHolder re-executes this program as a holder of path and returns
// the candidate the scanner finds for it.
func startHolder(ctx context.Context, path string) (func(), scanner.Candidate, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, scanner.Candidate{}, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), holderEnv+"="+path)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, scanner.Candidate{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, scanner.Candidate{}, err
	}
	if err := cmd.Start(); err != nil {
		return nil, scanner.Candidate{}, err
	}
	stopHolder := func() {
		stdin.Close()
		_ = cmd.Wait()
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	var fd int
	if _, serr := fmt.Sscanf(line, "ready %d", &fd); err != nil || serr != nil {
		stopHolder()
		return nil, scanner.Candidate{}, fmt.Errorf("holder: %q %v", line, errors.Join(err, serr))
	}
	res, err := scanner.New(scanner.Options{}, zap.NewNop()).SweepPIDs(ctx, []int{cmd.Process.Pid})
	if err != nil {
		stopHolder()
		return nil, scanner.Candidate{}, err
	}
	for _, c := range res.Candidates {
		if c.FD == fd {
			return stopHolder, c, nil
		}
	}
	stopHolder()
	return nil, scanner.Candidate{}, fmt.Errorf("scanner did not find pid %d fd %d", cmd.Process.Pid, fd)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func printTable(rows []row, size int64) {
	fmt.Printf("relink benchmark: %d MiB deleted file, medians over %d runs (kernel %s)\n\n", size>>20, len(rows[0].times), kernel())
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "fs\toperation\tmedian\tmin\tmax\tnote")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.fs, r.what, round(median(r.times)), round(slices.Min(r.times)), round(slices.Max(r.times)), r.note)
	}
	tw.Flush()
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

func kernel() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return strings.TrimRight(string(u.Release[:]), "\x00")
}
