package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/containerd/log"

	"github.com/overlayfuse/overlayfuse/internal/metrics"
)

// metricsServer serves /metrics on its own listener.
type metricsServer struct {
	l   net.Listener
	srv *http.Server
}

// listenMetrics takes the metrics address before anything else is
// touched, so that a taken port fails the start cleanly.
func listenMetrics(addr string) (*metricsServer, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics-address: %w", err)
	}
	return &metricsServer{l: l}, nil
}

func (s *metricsServer) serve(ctx context.Context, m *metrics.Metrics) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := s.srv.Serve(s.l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.G(ctx).WithError(err).Error("metrics server stopped")
		}
	}()
	log.G(ctx).WithField("address", s.l.Addr().String()).Info("serving metrics at /metrics")
}

func (s *metricsServer) close() {
	if s.srv == nil {
		s.l.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
}
