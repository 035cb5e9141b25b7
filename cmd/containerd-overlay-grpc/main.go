// Command containerd-overlay-grpc serves the overlayfuse snapshotter to
// containerd as a proxy snapshotter plugin, and the differ of its
// snapshots as a proxy diff plugin, over gRPC on one unix socket:
//
//	[proxy_plugins.overlayfuse]
//	  type = "snapshot"
//	  address = "/run/containerd-overlay-grpc/containerd-overlay-grpc.sock"
//	[proxy_plugins.overlayfuse-diff]
//	  type = "diff"
//	  address = "/run/containerd-overlay-grpc/containerd-overlay-grpc.sock"
//
// Every active snapshot is an overlayfuse mount served by this process.
// Each mount's FUSE connection is also held by a keeper outside it
// (systemd's fd store, or a `containerd-overlay-grpc keeper` process), so
// the mounts outlive it: on SIGTERM or SIGINT it stops serving them and
// exits, after a crash they are simply not served, and in both cases the
// next daemon on the same root takes them over (docs/restart.md); their
// users wait meanwhile. `containerd-overlay-grpc unmount-all` ends them for
// good once the daemon is stopped.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"google.golang.org/grpc"

	"github.com/overlayfuse/overlayfuse/internal/keeper"
	"github.com/overlayfuse/overlayfuse/internal/metrics"
	"github.com/overlayfuse/overlayfuse/internal/procsetup"
	"github.com/overlayfuse/overlayfuse/overlayfuse"
	"github.com/overlayfuse/overlayfuse/snapshotter"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

// stopTimeout bounds how long in-flight requests may run at shutdown.
const stopTimeout = 10 * time.Second

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case cmdKeeper:
			return runKeeper(args[1:], os.Stderr)
		case cmdUnmountAll:
			return runUnmountAll(args[1:], os.Stderr)
		}
	}
	o, err := parseArgs(args, os.Stdout)
	switch {
	case errors.Is(err, errHelp):
		return 0
	case err != nil:
		fmt.Fprintf(os.Stderr, "containerd-overlay-grpc: %v\n", err)
		return 1
	case o.version:
		fmt.Printf("containerd-overlay-grpc %s\n", versionString())
		return 0
	}
	if err := serve(o.config); err != nil {
		fmt.Fprintf(os.Stderr, "containerd-overlay-grpc: %v\n", err)
		return 1
	}
	return 0
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "unknown"
}

// serve runs until SIGTERM or SIGINT, then hands every mount over to the
// next daemon.
func serve(c config) (err error) {
	if err := log.SetLevel(c.LogLevel); err != nil {
		return err
	}
	ctx := log.WithLogger(context.Background(), log.L)
	procsetup.Setup()

	// Early, so that a signal during the restart's remounting still ends
	// with every mount handed over.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	// Log writes to a closed journal must not kill the process.
	signal.Ignore(syscall.SIGPIPE)

	// Refuse a socket we cannot serve on before the root is made or locked.
	if err := checkAddress(c.Address); err != nil {
		return err
	}

	var ms *metricsServer
	if c.MetricsAddress != "" {
		if ms, err = listenMetrics(c.MetricsAddress); err != nil {
			return err
		}
		defer ms.close()
	}

	lock, err := lockRoot(c.Root)
	if err != nil {
		return err
	}
	defer lock.Close()
	log.G(ctx).WithField("version", versionString()).WithField("root", c.Root).
		Info("starting containerd-overlay-grpc")

	opts := []snapshotter.Opt{
		snapshotter.WithPassthrough(overlayfuse.Passthrough(c.Passthrough)),
		snapshotter.WithConsistency(overlayfuse.Consistency(c.Consistency)),
	}
	// Without a keeper the daemon still works; its mounts end with it.
	if k, err := keeper.Open(c.Root, holderCommand(c.Root)); err != nil {
		log.G(ctx).WithError(err).Error("no keeper: the mounts will not outlive this process")
	} else {
		opts = append(opts, snapshotter.WithKeeper(k))
		// After the hand-over below: a holder left holding nothing exits.
		defer func() {
			if cerr := k.Close(); cerr != nil {
				log.G(ctx).WithError(cerr).Warn("closing keeper")
			}
		}()
	}
	if c.LogLevel == "trace" {
		opts = append(opts, snapshotter.WithFUSEDebug) // every FUSE request
	}
	var m *metrics.Metrics
	// A panic in one request fails that request, not every container.
	unary := []grpc.UnaryServerInterceptor{recoverUnary, namespaceInterceptor}
	stream := []grpc.StreamServerInterceptor{recoverStream}
	if ms != nil {
		m = metrics.New()
		opts = append(opts, snapshotter.WithMetrics(m))
		unary = append(unary, m.UnaryServerInterceptor())
		stream = append(stream, m.StreamServerInterceptor())
	}
	grpcOpts := []grpc.ServerOption{grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...)}
	sn, err := snapshotter.NewSnapshotter(c.Root, opts...)
	if err != nil {
		return err
	}
	// However we leave, the mounts stay for the next daemon: only
	// unmount-all ends them.
	defer func() {
		if cerr := sn.HandOver(); cerr != nil {
			log.G(ctx).WithError(cerr).Error("handing over mounts")
			err = errors.Join(err, cerr)
		}
	}()

	l, err := listen(c.Address)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpcOpts...)
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	containerd, err := registerDiff(srv, sn, c.ContainerdAddress)
	if err != nil {
		return err
	}
	defer containerd.Close()
	if ms != nil {
		m.AddSnapshotter(sn)
		ms.serve(ctx, m)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	log.G(ctx).WithField("address", c.Address).WithField("root", sn.Root()).
		Info("containerd-overlay-grpc serving")
	if err := sdNotify("READY=1"); err != nil {
		log.G(ctx).WithError(err).Warn("cannot notify systemd")
	}

	select {
	case sig := <-sigs:
		log.G(ctx).Infof("received %v, handing the mounts over to the next daemon", sig)
	case err = <-served:
		log.G(ctx).WithError(err).Error("gRPC server stopped")
	}
	_ = sdNotify("STOPPING=1")
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(stopTimeout):
		srv.Stop()
	}
	if rerr := os.Remove(c.Address); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		log.G(ctx).WithError(rerr).Warn("cannot remove socket")
	}
	return err
}
