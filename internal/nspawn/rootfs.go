// Package nspawn boots a minimal Debian root filesystem under
// systemd-nspawn(1), with systemd as the container's PID 1, and runs
// commands inside it. Tests use it to drive the shipped systemd unit under
// a real service manager on machines whose own PID 1 is not systemd.
//
// The root filesystem is built once with mmdebstrap(1) and cached as a
// tarball outside the repository; every run unpacks a fresh copy.
package nspawn

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
)

// Rootfs describes a minimal Debian root filesystem built by mmdebstrap.
type Rootfs struct {
	Suite   string   // Debian suite, e.g. "bookworm"
	Mirror  string   // archive URI, e.g. from AptMirror
	Include []string // packages on top of the minbase variant
	// PathExclude are dpkg path-exclude globs (documentation, manuals,
	// translations): fewer files make every unpacking faster.
	PathExclude []string
}

// MaxAge is how long a cached tarball is used before it is rebuilt, so a
// long-lived machine does not test against packages months old.
const MaxAge = 30 * 24 * time.Hour

// key names the tarball after everything that changes its content except
// the mirror (which only says where the same packages come from).
func (r Rootfs) key() string {
	h := sha256.New()
	fmt.Fprintf(h, "minbase\x00%s\x00%s\x00%s", r.Suite,
		strings.Join(r.Include, ","), strings.Join(r.PathExclude, ","))
	return "rootfs-" + r.Suite + "-" + hex.EncodeToString(h.Sum(nil))[:12] + ".tar"
}

// Tarball returns the path of r's tarball in cacheDir, building it first
// when it is missing or older than MaxAge (built reports which). The build
// writes into a temporary directory beside the cache and renames the
// finished tarball into place, so an interrupted or concurrent run never
// sees half a tarball; an exclusive flock(2) on cacheDir/.lock makes
// concurrent runs wait for one build instead of each doing its own.
func (r Rootfs) Tarball(ctx context.Context, cacheDir string) (path string, built bool, err error) {
	if r.Suite == "" || r.Mirror == "" {
		return "", false, errors.New("nspawn: rootfs needs a suite and a mirror")
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", false, err
	}
	path = filepath.Join(cacheDir, r.key())
	if fresh(path) {
		return path, false, nil
	}
	lock, err := os.OpenFile(filepath.Join(cacheDir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", false, err
	}
	defer lock.Close()
	if err := eintr.Retry0(func() error { return unix.Flock(int(lock.Fd()), unix.LOCK_EX) }); err != nil {
		return "", false, fmt.Errorf("nspawn: lock %s: %w", lock.Name(), err)
	}
	// Another run may have built it while this one waited for the lock.
	if fresh(path) {
		return path, false, nil
	}
	removeStaleBuilds(cacheDir)
	tmp, err := os.MkdirTemp(cacheDir, ".build-")
	if err != nil {
		return "", false, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "rootfs.tar")
	args := []string{"--mode=root", "--variant=minbase", "--format=tar"}
	if len(r.Include) > 0 {
		args = append(args, "--include="+strings.Join(r.Include, ","))
	}
	for _, p := range r.PathExclude {
		args = append(args, "--dpkgopt=path-exclude="+p)
	}
	args = append(args, r.Suite, out, r.Mirror)
	cmd := exec.CommandContext(ctx, "mmdebstrap", args...)
	// With no standard input mmdebstrap would read sources from it if
	// no mirror were given; one always is, and stdin is /dev/null.
	log, err := cmd.CombinedOutput()
	if err != nil {
		return "", false, fmt.Errorf("nspawn: mmdebstrap %s: %w\n%s", strings.Join(args, " "), err, tail(log, 40))
	}
	if err := os.Rename(out, path); err != nil {
		return "", false, err
	}
	return path, true, nil
}

// fresh reports whether path is a cached tarball young enough to use.
func fresh(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && time.Since(fi.ModTime()) < MaxAge
}

// removeStaleBuilds removes temporary build directories that a killed run
// left behind. Every build holds the lock for as long as its directory
// exists, so under the lock any such directory is stale.
func removeStaleBuilds(cacheDir string) {
	old, _ := filepath.Glob(filepath.Join(cacheDir, ".build-*"))
	for _, d := range old {
		os.RemoveAll(d)
	}
}

// Extract unpacks tarball into dir, which must not exist yet, keeping
// numeric owners, modes and special files.
func Extract(ctx context.Context, tarball, dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "tar", "--numeric-owner", "-xpf", tarball, "-C", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("nspawn: unpack %s into %s: %w\n%s", tarball, dir, err, out)
	}
	return nil
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
