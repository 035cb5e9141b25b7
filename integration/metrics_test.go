package integration

import (
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/overlayfuse/overlayfuse/integration/image"
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

	before := scrape(t, url)
	execIn(t, e, c, "for i in 1 2 3 4 5; do echo x > /metrics$i; done; echo more >> /data/keep.txt")
	after := scrape(t, url)
	delta := func(name string, labels ...string) float64 {
		return value(after, name, labels...) - value(before, name, labels...)
	}
	for _, k := range []struct {
		what      string
		got, want float64
	}{
		{"committed snapshots", value(after, "overlayfuse_snapshots", "kind", "committed"), float64(len(layers))},
		{"active snapshots", value(after, "overlayfuse_snapshots", "kind", "active"), 1},
		{"active mounts", value(after, "overlayfuse_active_mounts"), 1},
		// One per unpacked layer, and the container's.
		{"Prepare calls", value(after, "overlayfuse_grpc_request_duration_seconds", "method", "Prepare", "code", "OK"), float64(len(layers) + 1)},
		{"Commit calls", value(after, "overlayfuse_grpc_request_duration_seconds", "method", "Commit", "code", "OK"), float64(len(layers))},
		{"CREATE ops", delta("overlayfuse_fuse_op_duration_seconds", "op", "CREATE"), 5},
		// /data, then keep.txt.
		{"copy-ups", delta("overlayfuse_copyup_duration_seconds"), 2},
		{"copied-up bytes", delta("overlayfuse_copyup_bytes_total"), float64(size)},
	} {
		if k.got != k.want {
			t.Errorf("%s: %v, want %v", k.what, k.got, k.want)
		}
	}
	if v := value(after, "process_open_fds"); v <= 0 {
		t.Errorf("process_open_fds = %v", v)
	}
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return fams
}

// value sums the series of name that have the label pairs: counters and
// gauges by value, histograms by count.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	var sum float64
	for _, m := range fams[name].GetMetric() {
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				found = found || l.GetName() == labels[i] && l.GetValue() == labels[i+1]
			}
			ok = ok && found
		}
		if !ok {
			continue
		}
		switch {
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		}
	}
	return sum
}
