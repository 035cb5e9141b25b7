package overlayfuse

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/internal/metrics"
)

// benchMetrics measures the cost of the daemon's Prometheus metrics:
// compare runs with and without it.
var benchMetrics = flag.Bool("bench.metrics", false, "mount the benchmarks' overlay with the daemon's Prometheus metrics")

// benchTree fills dir with dirs×files small files.
func benchTree(b *testing.B, dir string, dirs, files int) {
	b.Helper()
	for i := 0; i < dirs; i++ {
		d := filepath.Join(dir, fmt.Sprintf("d%d", i))
		must(b, os.MkdirAll(d, 0o755))
		for j := 0; j < files; j++ {
			must(b, os.WriteFile(filepath.Join(d, fmt.Sprintf("f%d", j)), []byte("x"), 0o644))
		}
	}
}

func benchMount(b *testing.B) *testMount {
	b.Helper()
	base := b.TempDir()
	lower, upper, work, mnt := filepath.Join(base, "l"), filepath.Join(base, "u"), filepath.Join(base, "w"), filepath.Join(base, "m")
	for _, d := range []string{lower, upper, work, mnt} {
		must(b, os.Mkdir(d, 0o755))
	}
	benchTree(b, lower, 100, 100)
	var opts Options
	if *benchMetrics {
		opts.Metrics = metrics.New()
	}
	srv, err := Mount(mnt, Layers{Lower: []string{lower}, Upper: upper, Work: work}, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	return &testMount{dir: mnt, upper: upper, work: work, lowers: []string{lower}, srv: srv}
}

func dropCaches(b *testing.B) {
	b.Helper()
	unix.Sync()
	must(b, os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0))
}

// BenchmarkLsLRCold lists 10,000 lower files with ls -lR on a fresh
// kernel cache each time: every entry is looked up and asked for xattrs.
func BenchmarkLsLRCold(b *testing.B) {
	m := benchMount(b)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dropCaches(b)
		b.StartTimer()
		if out, err := exec.Command("ls", "-lR", m.dir).CombinedOutput(); err != nil {
			b.Fatalf("ls: %v %s", err, out)
		}
	}
}

// BenchmarkLsLRWarm is ls -lR again over the cached tree.
func BenchmarkLsLRWarm(b *testing.B) {
	m := benchMount(b)
	_ = exec.Command("ls", "-lR", m.dir).Run()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if out, err := exec.Command("ls", "-lR", m.dir).CombinedOutput(); err != nil {
			b.Fatalf("ls: %v %s", err, out)
		}
	}
}

// BenchmarkCreate makes, writes and closes small files through the mount,
// as an untar does.
func BenchmarkCreate(b *testing.B) {
	m := benchMount(b)
	must(b, os.Mkdir(m.path("new"), 0o755))
	data := []byte("hello")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := m.path(fmt.Sprintf("new/f%d", i))
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
}
