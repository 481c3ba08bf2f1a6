package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/relinkd/relinkd/internal/testproc"
)

// A test binary started with envComm set is a holder that names itself
// (see commHolder) instead of running tests.
const (
	envComm     = "RELINKD_TEST_COMM"
	envCommFile = "RELINKD_TEST_COMM_FILE"
)

func TestMain(m *testing.M) {
	if comm, ok := os.LookupEnv(envComm); ok {
		os.Exit(commHolder(comm, os.Getenv(envCommFile)))
	}
	testproc.Main(m)
}

// commHolder sets its process name (comm) to comm, as any process may,
// holds path open and deleted, prints "ready FD" and waits for stdin to
// close. Writing /proc/self/comm names the thread-group leader, whichever
// thread runs this (proc(5)); prctl(PR_SET_NAME) would name only the
// calling thread, and the Go runtime does not promise which that is.
func commHolder(comm, path string) int {
	if err := os.WriteFile("/proc/self/comm", []byte(comm), 0); err != nil {
		fmt.Fprintln(os.Stderr, "comm holder:", err)
		return 1
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err == nil {
		_, err = f.WriteString("held by a process with an odd name")
	}
	if err == nil {
		err = os.Remove(path)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "comm holder:", err)
		return 1
	}
	fmt.Printf("ready %d\n", f.Fd())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// startCommHolder starts a commHolder and returns its pid and descriptor.
func startCommHolder(t *testing.T, comm, path string) (pid, fd int) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), envComm+"="+comm, envCommFile+"="+path)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != 2 || f[0] != "ready" {
		t.Fatalf("comm holder: no readiness line: %q %v", line, err)
	}
	if fd, err = strconv.Atoi(f[1]); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid, fd
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildOut  []byte
)

// relinkdBinary builds the real binary once per test run, so the tests of
// this package drive what operators run.
func relinkdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "relinkd-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "relinkd")
		cmd := exec.Command("go", "build", "-o", binPath, ".")
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build: %v\n%s", buildErr, buildOut)
	}
	return binPath
}
