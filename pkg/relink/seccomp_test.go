package relink

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/testfs"
)

// seccompChildEnv marks the re-executed test binary that runs under a
// seccomp filter refusing openat2.
const seccompChildEnv = "RELINKD_TEST_OPENAT2_REFUSED"

// refuseOpenat2 installs, for every thread of this process and its
// children, a seccomp filter that answers openat2(2) with errno, as
// systemd's RestrictSUIDSGID=yes does (ENOSYS) and some container
// runtimes do (EPERM). Everything else is allowed.
func refuseOpenat2(t *testing.T, errno unix.Errno) {
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // seccomp_data.nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: unix.SYS_OPENAT2},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(errno)&unix.SECCOMP_RET_DATA},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		t.Fatalf("PR_SET_NO_NEW_PRIVS: %v", err)
	}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		t.Fatalf("seccomp: %v", e)
	}
}

// TestOpenat2Refused: under a seccomp filter that refuses openat2 (ENOSYS
// as under the shipped unit, or EPERM), the engine notices once at New,
// walks component by component, still rescues, and still refuses a
// planted symlink. The filter is installed in a re-executed copy of the
// test binary so that the other tests keep openat2.
func TestOpenat2Refused(t *testing.T) {
	if v := os.Getenv(seccompChildEnv); v != "" {
		openat2RefusedChild(t, v)
		return
	}
	testfs.RequireRoot(t)
	for _, errno := range []string{"ENOSYS", "EPERM"} {
		t.Run(errno, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestOpenat2Refused$", "-test.v")
			cmd.Env = append(os.Environ(), seccompChildEnv+"="+errno)
			out, err := cmd.CombinedOutput()
			t.Logf("child:\n%s", out)
			if err != nil {
				t.Fatalf("child under seccomp (openat2 → %s): %v", errno, err)
			}
			if !bytes.Contains(out, []byte("resolution: component walk")) || !bytes.Contains(out, []byte("--- PASS: TestOpenat2Refused")) {
				t.Fatal("the child did not run its checks")
			}
		})
	}
}

func openat2RefusedChild(t *testing.T, errno string) {
	e := map[string]unix.Errno{"ENOSYS": unix.ENOSYS, "EPERM": unix.EPERM}[errno]
	if e == 0 {
		t.Fatalf("unknown errno %q", errno)
	}
	refuseOpenat2(t, e)
	if err := ProbeOpenat2(); !errors.Is(err, e) {
		t.Fatalf("probe under the filter: want %s, got %v", errno, err)
	}
	eng := newEngine(t, Options{Sidecar: true})
	t.Logf("resolution: %s", eng.Resolution())
	if eng.Resolution() != "component walk" {
		t.Fatalf("resolution under the filter: %s", eng.Resolution())
	}
	mnt := testfs.Mount(t, "ext4", 32)
	src := filepath.Join(mnt, "data/app.log")
	data := randomBytes(40_000, 9)
	writeFile(t, src, data)
	_, c := holdDeleted(t, src, "r")
	res, err := resultOf(eng.Rescue(ctx(t), pin(t, eng, c), Destination{Root: filepath.Join(mnt, ".relinkd"), Rel: "data/app.log"}))
	if err != nil {
		t.Fatalf("rescue with openat2 refused: %v", err)
	}
	mustEqualBytes(t, res.Path, data, readAll(t, res.Path))

	outside := t.TempDir()
	root := filepath.Join(mnt, ".trap")
	must(t, os.MkdirAll(root, 0o700))
	must(t, os.Symlink(outside, filepath.Join(root, "data")))
	_, c2 := holdDeleted(t, writeTemp(t, mnt, data), "r")
	if _, err := eng.Rescue(ctx(t), pin(t, eng, c2), Destination{Root: root, Rel: "data/x"}); !errors.Is(err, ErrUnsafePath) {
		t.Fatalf("rescue through a planted symlink: want ErrUnsafePath, got %v", err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("written through the symlink: %v", ents)
	}
}

// writeTemp writes data to a new file in dir and returns its path.
func writeTemp(t *testing.T, dir string, data []byte) string {
	f, err := os.CreateTemp(dir, "src-*")
	must(t, err)
	_, err = f.Write(data)
	must(t, err)
	must(t, f.Close())
	return f.Name()
}
