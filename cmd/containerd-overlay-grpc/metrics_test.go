//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"github.com/overlayfuse/overlayfuse/internal/testutil/mounttest"
	"github.com/overlayfuse/overlayfuse/internal/testutil/promtest"
)

// TestMetricsScrape runs a known workload through the snapshots API and
// a mounted snapshot, and checks what /metrics says about it.
func TestMetricsScrape(t *testing.T) {
	testutil.RequireFUSE(t)
	ctx := context.Background()
	dir := shortTempDir(t)
	root, addr := filepath.Join(dir, "root"), filepath.Join(dir, "s.sock")
	maddr := freePort(t)
	d, err := startDaemon(root, addr, "--metrics-address", maddr)
	if err != nil {
		t.Fatal(err)
	}
	cleanupDaemon(t, d)
	url := "http://" + maddr + "/metrics"
	before := promtest.Scrape(t, url)

	sn, closeConn, err := dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	const lowerFiles, size, creates = 3, 1000, 7
	m, err := sn.Prepare(ctx, "b", "")
	if err != nil {
		t.Fatal(err)
	}
	base := mounttest.MountAt(t, m)
	for i := 0; i < lowerFiles; i++ {
		writeFile(t, filepath.Join(base, fmt.Sprint("l", i)), strings.Repeat("x", size))
	}
	if err := os.Mkdir(filepath.Join(base, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(base, "d", "f"), "")
	mounttest.Detach(t, base)
	if err := sn.Commit(ctx, "base", "b"); err != nil {
		t.Fatal(err)
	}
	var x []string
	for _, k := range []string{"x", "y"} {
		m, err := sn.Prepare(ctx, k, "base")
		if err != nil {
			t.Fatal(err)
		}
		if k == "x" {
			x = append(x, mounttest.MountAt(t, m))
		}
	}
	if _, err := sn.View(ctx, "v", "base"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Stat(ctx, "missing"); !errdefs.IsNotFound(err) {
		t.Fatalf("stat of a missing snapshot: %v", err)
	}
	walked := 0
	if err := sn.Walk(ctx, func(context.Context, snapshots.Info) error { walked++; return nil }); err != nil || walked != 4 {
		t.Fatalf("walk: %d snapshots, %v; want 4", walked, err)
	}
	// Through x's FUSE mount: new files, and copy-ups of the lower ones.
	for i := 0; i < creates; i++ {
		writeFile(t, filepath.Join(x[0], fmt.Sprint("new", i)), "data")
	}
	for i := 0; i < lowerFiles; i++ {
		f, err := os.OpenFile(filepath.Join(x[0], fmt.Sprint("l", i)), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if err := syscall.Rmdir(filepath.Join(x[0], "d")); err != syscall.ENOTEMPTY {
		t.Fatalf("rmdir of a full directory: %v", err)
	}

	after := promtest.Scrape(t, url)
	delta := func(name string, labels ...string) float64 {
		return promtest.Value(after, name, labels...) - promtest.Value(before, name, labels...)
	}
	for _, c := range []struct {
		what      string
		got, want float64
	}{
		{"active snapshots", promtest.Value(after, "overlayfuse_snapshots", "kind", "active"), 2},
		{"views", promtest.Value(after, "overlayfuse_snapshots", "kind", "view"), 1},
		{"committed snapshots", promtest.Value(after, "overlayfuse_snapshots", "kind", "committed"), 1},
		{"active mounts", promtest.Value(after, "overlayfuse_active_mounts"), 2}, // x and y; b and v are bind mounts
		{"Prepare calls", delta("overlayfuse_grpc_request_duration_seconds", "method", "Prepare", "code", "OK"), 3},
		{"Commit calls", delta("overlayfuse_grpc_request_duration_seconds", "method", "Commit", "code", "OK"), 1},
		{"View calls", delta("overlayfuse_grpc_request_duration_seconds", "method", "View", "code", "OK"), 1},
		{"List calls", delta("overlayfuse_grpc_request_duration_seconds", "method", "List", "code", "OK"), 1},
		{"failed Stat calls", delta("overlayfuse_grpc_request_duration_seconds", "method", "Stat", "code", "NotFound"), 1},
		{"CREATE ops", delta("overlayfuse_fuse_op_duration_seconds", "op", "CREATE"), creates},
		{"OPEN ops", delta("overlayfuse_fuse_op_duration_seconds", "op", "OPEN"), lowerFiles},
		{"RMDIR ENOTEMPTY", delta("overlayfuse_fuse_op_errors_total", "op", "RMDIR", "errno", "ENOTEMPTY"), 1},
		{"copy-ups", delta("overlayfuse_copyup_duration_seconds"), lowerFiles},
		{"copied-up bytes", delta("overlayfuse_copyup_bytes_total"), lowerFiles * size},
		{"opens", delta("overlayfuse_opens_total", "mode", "passthrough") + delta("overlayfuse_opens_total", "mode", "served"), creates + lowerFiles},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	for _, name := range []string{"process_open_fds", "go_goroutines"} {
		if v := promtest.Value(after, name); v <= 0 {
			t.Errorf("%s = %v", name, v)
		}
	}
}

// freePort is a local address no one listens on now. The daemon's log
// line with the port it got from port 0 may reach the test's buffer after
// READY=1, so the test picks the port.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// A metrics address in use fails the start before the root is touched.
func TestMetricsAddressInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := shortTempDir(t)
	root := filepath.Join(dir, "root")
	_, stderr, code := runDaemon(t, "--root", root, "--address", filepath.Join(dir, "s.sock"), "--metrics-address", l.Addr().String())
	if code == 0 || !strings.Contains(stderr, "metrics-address") || !strings.Contains(stderr, "address already in use") {
		t.Errorf("exit %d, stderr %q: want a failure naming metrics-address", code, stderr)
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Errorf("root %s: %v, want it never made", root, err)
	}
}
