package procfs

import (
	"os"
	"strconv"
	"testing"

	prom "github.com/prometheus/procfs"
)

// The benchmarks below read this process's pseudo-files with FS and with
// github.com/prometheus/procfs, for the figures in the README's
// Dependencies section: where procfs would cost the event path, relinkd
// reads /proc itself.

func BenchmarkStat(b *testing.B) {
	pid := os.Getpid()
	b.Run("relinkd", func(b *testing.B) {
		var fs FS
		for b.Loop() {
			if _, err := fs.Stat(pid); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("prometheus", func(b *testing.B) {
		fs, err := prom.NewFS(DefaultRoot)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			p, err := fs.Proc(pid)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := p.Stat(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkPIDs(b *testing.B) {
	b.Run("relinkd", func(b *testing.B) {
		var fs FS
		for b.Loop() {
			if _, err := fs.PIDs(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("prometheus", func(b *testing.B) {
		fs, err := prom.NewFS(DefaultRoot)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := fs.AllProcs(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkFDInfo(b *testing.B) {
	f, err := os.Open(os.Args[0])
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fd, pid := int(f.Fd()), os.Getpid()
	b.Run("relinkd", func(b *testing.B) {
		var fs FS
		for b.Loop() {
			if _, err := fs.FDInfo(strconv.Itoa(pid), fd); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("prometheus", func(b *testing.B) {
		fs, err := prom.NewFS(DefaultRoot)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			p, err := fs.Proc(pid)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := p.FDInfo(strconv.Itoa(fd)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkMountInfo(b *testing.B) {
	b.Run("relinkd", func(b *testing.B) {
		var fs FS
		for b.Loop() {
			if _, err := fs.MountInfo("self"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("prometheus", func(b *testing.B) {
		fs, err := prom.NewFS(DefaultRoot)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			p, err := fs.Self()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := p.MountInfo(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
