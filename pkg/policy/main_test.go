package policy

import (
	"os"
	"testing"

	"github.com/relinkd/relinkd/internal/testproc"
)

func TestMain(m *testing.M) { testproc.Main(m) }

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
