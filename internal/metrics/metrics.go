// Package metrics exports what the daemon and its overlay mounts do as
// Prometheus metrics, all named overlayfuse_*. Labels are bounded: FUSE
// opcode, errno, gRPC method and code, snapshot kind; never a path or a
// snapshot.
package metrics

import (
	"context"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

const namespace = "overlayfuse"

// Buckets of the histograms. A FUSE request answered from memory takes
// some microseconds, one that reads a cold disk some milliseconds.
var (
	fuseBuckets   = prometheus.ExponentialBucketsRange(10e-6, 1, 11)   // 10µs .. 1s
	copyUpBuckets = prometheus.ExponentialBucketsRange(100e-6, 10, 11) // 100µs .. 10s
	grpcBuckets   = prometheus.ExponentialBucketsRange(100e-6, 10, 11) // 100µs .. 10s
)

// Metrics holds the daemon's metrics in a registry of its own. It
// implements overlayfuse.Metrics.
type Metrics struct {
	reg *prometheus.Registry

	opSeconds     *prometheus.HistogramVec
	opErrors      *prometheus.CounterVec
	copyUpSeconds prometheus.Histogram
	copyUpBytes   prometheus.Counter
	passthrough   prometheus.Counter
	served        prometheus.Counter
	grpcSeconds   *prometheus.HistogramVec

	// Resolved label sets: a request must not pay for hashing its
	// labels on every call.
	ops  sync.Map // op -> prometheus.Observer
	errs sync.Map // opErrno -> prometheus.Counter
}

type opErrno struct {
	op    string
	errno syscall.Errno
}

// New makes the metrics, with the Go runtime's and the process's (open
// fds, goroutines, memory) registered beside them.
func New() *Metrics {
	opens := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "opens_total",
		Help: "Files opened or created, by mode: passthrough (the kernel does the I/O on the backing file) or served (I/O goes through the daemon).",
	}, []string{"mode"})
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		opSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "fuse_op_duration_seconds",
			Help:    "Time the daemon took to answer a FUSE request, by opcode.",
			Buckets: fuseBuckets,
		}, []string{"op"}),
		opErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "fuse_op_errors_total",
			Help: "FUSE requests answered with an error, by opcode and errno.",
		}, []string{"op", "errno"}),
		copyUpSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "copyup_duration_seconds",
			Help:    "Time a copy-up of one file or directory to the upper layer took; its count is the number of copy-ups.",
			Buckets: copyUpBuckets,
		}),
		copyUpBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "copyup_bytes_total",
			Help: "File data copied up to upper layers.",
		}),
		passthrough: opens.WithLabelValues("passthrough"),
		served:      opens.WithLabelValues("served"),
		grpcSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "grpc_request_duration_seconds",
			Help:    "Time a snapshots API request took, by method and gRPC status code.",
			Buckets: grpcBuckets,
		}, []string{"method", "code"}),
	}
	m.reg.MustRegister(m.opSeconds, m.opErrors, m.copyUpSeconds, m.copyUpBytes, opens, m.grpcSeconds,
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	return m
}

// Op records one FUSE request.
func (m *Metrics) Op(op string, d time.Duration, errno syscall.Errno) {
	o, ok := m.ops.Load(op)
	if !ok {
		o, _ = m.ops.LoadOrStore(op, m.opSeconds.WithLabelValues(op))
	}
	o.(prometheus.Observer).Observe(d.Seconds())
	if errno == 0 {
		return
	}
	k := opErrno{op, errno}
	c, ok := m.errs.Load(k)
	if !ok {
		c, _ = m.errs.LoadOrStore(k, m.opErrors.WithLabelValues(op, errnoName(errno)))
	}
	c.(prometheus.Counter).Inc()
}

func errnoName(e syscall.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return strconv.Itoa(int(e))
}

// CopyUp records one copy-up.
func (m *Metrics) CopyUp(bytes int64, d time.Duration) {
	m.copyUpSeconds.Observe(d.Seconds())
	m.copyUpBytes.Add(float64(bytes))
}

// Open records one open or create.
func (m *Metrics) Open(passthrough bool) {
	if passthrough {
		m.passthrough.Inc()
	} else {
		m.served.Inc()
	}
}

// UnaryServerInterceptor times every unary request of a gRPC server.
func (m *Metrics) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		m.grpcSeconds.WithLabelValues(path.Base(info.FullMethod), status.Code(err).String()).
			Observe(time.Since(start).Seconds())
		return resp, err
	}
}

// StreamServerInterceptor times every streaming request (List) of a gRPC
// server, to its last message.
func (m *Metrics) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		err := handler(srv, ss)
		m.grpcSeconds.WithLabelValues(path.Base(info.FullMethod), status.Code(err).String()).
			Observe(time.Since(start).Seconds())
		return err
	}
}

// Snapshotter is what the snapshot gauges ask at each scrape.
type Snapshotter interface {
	ActiveMounts() int
	Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error
}

// AddSnapshotter exports the mounts and snapshots of s.
func (m *Metrics) AddSnapshotter(s Snapshotter) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "active_mounts",
			Help: "Overlay mounts the daemon serves.",
		}, func() float64 { return float64(s.ActiveMounts()) }),
		&snapshotCollector{s: s, desc: prometheus.NewDesc(namespace+"_snapshots",
			"Snapshots, by kind (active, view, committed).", []string{"kind"}, nil)},
	)
}

// Handler serves the metrics in Prometheus' exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: errorLog{}})
}

type errorLog struct{}

func (errorLog) Println(v ...any) { log.L.Warn(v...) }

// snapshotCollector counts the snapshots by kind at each scrape, from
// the metadata store: one read transaction, no FUSE.
type snapshotCollector struct {
	s    Snapshotter
	desc *prometheus.Desc
}

// walkTimeout bounds a scrape's walk, which waits for writers of the
// metadata store.
const walkTimeout = 5 * time.Second

func (c *snapshotCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), walkTimeout)
	defer cancel()
	counts := map[snapshots.Kind]int{snapshots.KindActive: 0, snapshots.KindView: 0, snapshots.KindCommitted: 0}
	err := c.s.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		counts[info.Kind]++
		return nil
	})
	// A store that never held a snapshot has no bucket to walk yet.
	if err != nil && !errdefs.IsNotFound(err) {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), strings.ToLower(k.String()))
	}
}
