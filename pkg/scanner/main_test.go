package scanner

import (
	"testing"

	"github.com/relinkd/relinkd/internal/testproc"
)

func TestMain(m *testing.M) { testproc.Main(m) }
