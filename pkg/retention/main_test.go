package retention

import (
	"os"
	"testing"

	"github.com/relinkd/relinkd/internal/testlayout"
)

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeOwned(t *testing.T, path string, size int, uid int) {
	testlayout.WriteOwned(t, path, size, uid)
}

func mustMkdir(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}
