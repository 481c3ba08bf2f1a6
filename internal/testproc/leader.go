package testproc

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// exitedLeader opens argv[1], unlinks it, starts a sleeping thread and
// ends the main thread alone with pthread_exit(3): the process lives on in
// that thread, with a zombie thread-group leader whose /proc/PID/fd is
// empty. (The sleeping thread never gets the GIL back; it only has to
// exist.)
const exitedLeader = `
import ctypes, os, sys, threading, time
f = open(sys.argv[1])
os.unlink(sys.argv[1])
threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
print("ready", flush=True)
ctypes.CDLL(None).pthread_exit(None)
`

// StartExitedLeader starts a python3 process holding path deleted whose
// main thread has exited, waits until its leader is a zombie and returns
// its pid. The process is killed when the test ends.
func StartExitedLeader(t testing.TB, path string) int {
	t.Helper()
	cmd := exec.Command("python3", "-c", exitedLeader, path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("exited-leader holder: %q, %v", line, err)
	}
	pid := cmd.Process.Pid
	status := "/proc/" + strconv.Itoa(pid) + "/status"
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile(status)
		if err == nil && strings.Contains(string(b), "\nState:\tZ") {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("leader of %d did not exit: %s %v", pid, b, err)
		}
	}
}
