//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"github.com/overlayfuse/overlayfuse/internal/testutil/mounttest"
)

// BenchmarkDaemonRSS100Active reports the daemon's resident memory with
// 100 active snapshots of a 5-layer image, each read through once. Run
// with -benchtime=1x.
func BenchmarkDaemonRSS100Active(b *testing.B) {
	testutil.RequireFUSE(b)
	ctx := context.Background()
	for range b.N {
		dir := shortTempDir(b)
		root, addr := filepath.Join(dir, "root"), filepath.Join(dir, "s.sock")
		d, err := startDaemon(root, addr, "--log-level", "warn")
		if err != nil {
			b.Fatal(err)
		}
		cleanupDaemon(b, d)
		sn, closeConn, err := dial(addr)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = closeConn() })

		parent := ""
		for i := range 5 {
			key, name := fmt.Sprintf("l%d-active", i), fmt.Sprintf("l%d", i)
			m, err := sn.Prepare(ctx, key, parent)
			if err != nil {
				b.Fatal(err)
			}
			target := mounttest.MountAt(b, m)
			writeFile(b, filepath.Join(target, fmt.Sprintf("f%d", i)), "data")
			mounttest.Detach(b, target)
			if err := sn.Commit(ctx, name, key); err != nil {
				b.Fatal(err)
			}
			parent = name
		}
		idle := daemonRSSKiB(b, d)
		for i := range 100 {
			m, err := sn.Prepare(ctx, fmt.Sprintf("active-%d", i), parent)
			if err != nil {
				b.Fatal(err)
			}
			// Read through the overlay itself: no bind mount to undo.
			if _, err := os.ReadFile(filepath.Join(m[0].Source, "f0")); err != nil {
				b.Fatal(err)
			}
		}
		rss := daemonRSSKiB(b, d)
		b.ReportMetric(float64(idle)/1024, "MiB-RSS-idle")
		b.ReportMetric(float64(rss)/1024, "MiB-RSS-100")
		b.ReportMetric(float64(rss-idle)/100, "KiB-RSS/snapshot")
		if err := d.stop(syscall.SIGTERM); err != nil {
			b.Fatal(err)
		}
	}
}

func daemonRSSKiB(b testing.TB, d *daemon) int64 {
	b.Helper()
	return testutil.ProcKiB(b, fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid), "VmRSS")
}
