package probe

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/relinkd/relinkd/internal/procfs"
)

func TestEffectiveCaps(t *testing.T) {
	dir := t.TempDir()
	proc := procfs.New(dir)
	if err := os.Mkdir(filepath.Join(dir, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	status := filepath.Join(dir, "self", "status")
	writeFile(t, status, "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000280004\n")
	caps, err := proc.EffectiveCaps("self")
	if err != nil || caps != 0x280004 {
		t.Fatalf("caps %x %v", caps, err)
	}
	var held []string
	for _, c := range Capabilities() {
		if caps&(1<<c.Bit) != 0 {
			held = append(held, c.Name)
		}
	}
	// 0x280004: bits 2 (DAC_READ_SEARCH), 19 (SYS_PTRACE), 21 (SYS_ADMIN).
	if want := []string{"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}; !reflect.DeepEqual(held, want) {
		t.Errorf("held %v, want %v", held, want)
	}
	writeFile(t, status, "Name:\tx\n")
	if _, err := proc.EffectiveCaps("self"); !errors.Is(err, procfs.ErrNoCapEff) {
		t.Errorf("no CapEff: %v", err)
	}
	if _, err := proc.EffectiveCaps("none"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
