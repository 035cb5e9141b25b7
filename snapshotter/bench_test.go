//go:build linux

package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"github.com/overlayfuse/overlayfuse/internal/testutil/mounttest"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"
)

// commitChain commits n layers, one file each, and returns the top one.
func commitChain(ctx context.Context, b *testing.B, s *Snapshotter, n int) string {
	b.Helper()
	parent := ""
	for i := range n {
		name := fmt.Sprintf("layer-%d", i)
		commitLayer(ctx, b, s, name, parent, map[string]string{fmt.Sprintf("f%d", i): "data"})
		parent = name
	}
	return parent
}

// BenchmarkPrepareMount20Layers measures what containerd waits for when it
// starts a container on a 20-layer image: Prepare, Mounts, the bind mount,
// and the first lookup through it.
func BenchmarkPrepareMount20Layers(b *testing.B) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(b)
	top := commitChain(ctx, b, s, 20)
	target := b.TempDir()
	b.Cleanup(func() { mounttest.Detach(b, target) })

	b.ResetTimer()
	for i := range b.N {
		key := fmt.Sprintf("active-%d", i)
		if _, err := s.Prepare(ctx, key, top); err != nil {
			b.Fatal(err)
		}
		m, err := s.Mounts(ctx, key)
		if err != nil {
			b.Fatal(err)
		}
		if err := mount.All(m, target); err != nil {
			b.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(target, "f0")); err != nil {
			b.Fatal(err)
		}

		b.StopTimer()
		if err := unix.Unmount(target, 0); err != nil {
			b.Fatal(err)
		}
		if err := s.Remove(ctx, key); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkRSS100Active reports how much resident memory 100 active
// snapshots (each its own FUSE server, each used once) add to the process.
// Run with -benchtime=1x.
func BenchmarkRSS100Active(b *testing.B) {
	ctx := context.Background()
	for range b.N {
		s, _ := newTestSnapshotter(b)
		top := commitChain(ctx, b, s, 5)
		runtime.GC()
		before := vmRSSKiB(b, "self")
		for i := range 100 {
			m, err := s.Prepare(ctx, fmt.Sprintf("active-%d", i), top)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := os.ReadFile(filepath.Join(m[0].Source, "f0")); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		after := vmRSSKiB(b, "self")
		b.ReportMetric(float64(after)/1024, "MiB-RSS")
		b.ReportMetric(float64(after-before)/100, "KiB-RSS/snapshot")
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// vmRSSKiB reads the resident set size of a process from /proc.
func vmRSSKiB(b testing.TB, pid string) int64 {
	b.Helper()
	return testutil.ProcKiB(b, filepath.Join("/proc", pid, "status"), "VmRSS")
}
