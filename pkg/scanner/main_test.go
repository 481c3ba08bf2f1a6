package scanner

import (
	"os"
	"testing"

	"github.com/relinkd/relinkd/internal/testproc"
)

func TestMain(m *testing.M) {
	if pid, ok := os.LookupEnv(envSweepChild); ok {
		os.Exit(sweepChild(pid))
	}
	if dir, ok := os.LookupEnv(envPIDNSChild); ok {
		os.Exit(pidnsChild(dir))
	}
	if _, ok := os.LookupEnv(envBackendChild); ok {
		os.Exit(backendChild())
	}
	testproc.Main(m)
}
