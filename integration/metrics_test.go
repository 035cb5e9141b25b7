package integration

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/overlayfuse/overlayfuse/integration/image"
	"github.com/overlayfuse/overlayfuse/internal/testutil/promtest"
)

// TestMetrics scrapes the daemon's /metrics while containerd uses it: the
// snapshots of an imported image and a running container, containerd's
// calls, and the creates and copy-ups of a known workload in the container.
func TestMetrics(t *testing.T) {
	if snapshotter != "overlayfuse" {
		t.Skipf("metrics are the overlayfuse daemon's; snapshotter is %s", snapshotter)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	e := newEnv(t, "--metrics-address", addr)
	url := "http://" + addr + "/metrics"
	layers, err := image.CasesLayers()
	if err != nil {
		t.Fatal(err)
	}
	importCases(t, e)
	c := startSleeper(t, e, "metrics")
	size, err := strconv.Atoi(strings.TrimSpace(execIn(t, e, c, "stat -c %s /data/keep.txt")))
	if err != nil {
		t.Fatal(err)
	}

	before := promtest.Scrape(t, url)
	execIn(t, e, c, "for i in 1 2 3 4 5; do echo x > /metrics$i; done; echo more >> /data/keep.txt")
	after := promtest.Scrape(t, url)
	delta := func(name string, labels ...string) float64 {
		return promtest.Value(after, name, labels...) - promtest.Value(before, name, labels...)
	}
	for _, k := range []struct {
		what      string
		got, want float64
	}{
		{"committed snapshots", promtest.Value(after, "overlayfuse_snapshots", "kind", "committed"), float64(len(layers))},
		{"active snapshots", promtest.Value(after, "overlayfuse_snapshots", "kind", "active"), 1},
		{"active mounts", promtest.Value(after, "overlayfuse_active_mounts"), 1},
		// One per unpacked layer, and the container's.
		{"Prepare calls", promtest.Value(after, "overlayfuse_grpc_request_duration_seconds", "method", "Prepare", "code", "OK"), float64(len(layers) + 1)},
		{"Commit calls", promtest.Value(after, "overlayfuse_grpc_request_duration_seconds", "method", "Commit", "code", "OK"), float64(len(layers))},
		{"CREATE ops", delta("overlayfuse_fuse_op_duration_seconds", "op", "CREATE"), 5},
		// /data, then keep.txt.
		{"copy-ups", delta("overlayfuse_copyup_duration_seconds"), 2},
		{"copied-up bytes", delta("overlayfuse_copyup_bytes_total"), float64(size)},
	} {
		if k.got != k.want {
			t.Errorf("%s: %v, want %v", k.what, k.got, k.want)
		}
	}
	if v := promtest.Value(after, "process_open_fds"); v <= 0 {
		t.Errorf("process_open_fds = %v", v)
	}
}
