package testcontainer

import (
	"bufio"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/relinkd/relinkd/internal/testfs"
)

// Unshare runs script with sh in namespaces of its own (flags are
// unshare(1)'s: "--mount", "--pid", "--fork", "--propagation", "private",
// …), with env added to the environment, and returns once it printed its
// first line, which must be "ready". It returns the command and its stdin;
// the process is killed at cleanup. It needs root and unshare (skips
// without them, fails in CI).
func Unshare(t testing.TB, flags []string, script string, env ...string) (*exec.Cmd, io.Writer) {
	t.Helper()
	testfs.RequireRoot(t)
	testfs.RequireTool(t, "unshare")
	cmd := exec.Command("unshare", append(flags, "sh", "-c", script)...)
	cmd.Env = append(cmd.Environ(), env...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("unshare %s: first line %q %v, want ready", strings.Join(flags, " "), line, err)
	}
	return cmd, in
}
