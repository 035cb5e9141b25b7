package main

import (
	"context"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/containerd/v2/contrib/diffservice"
	csproxy "github.com/containerd/containerd/v2/core/content/proxy"
	leasesproxy "github.com/containerd/containerd/v2/core/leases/proxy"
	"github.com/containerd/containerd/v2/pkg/dialer"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/overlayfuse/overlayfuse/differ"
	"github.com/overlayfuse/overlayfuse/snapshotter"
)

// registerDiff serves containerd's diff API for our snapshots on srv
// ([proxy_plugins.overlayfuse-diff] type = "diff"). The layers live in
// containerd's content store, reached at address on first use. Close
// the returned connection when srv has stopped.
func registerDiff(srv *grpc.Server, sn *snapshotter.Snapshotter, address string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(dialer.DialAddress(address),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer.ContextDialer))
	if err != nil {
		return nil, err
	}
	d := differ.New(sn, csproxy.NewContentStore(conn),
		differ.WithLeases(leasesproxy.NewLeaseManager(leasesapi.NewLeasesClient(conn))))
	diffapi.RegisterDiffServer(srv, diffservice.FromApplierAndComparer(d, d))
	return conn, nil
}

// namespaceInterceptor passes the namespace of containerd's request on
// to the calls the differ makes back to containerd, as containerd's own
// gRPC server does.
func namespaceInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if ns, ok := namespaces.Namespace(ctx); ok {
		ctx = namespaces.WithNamespace(ctx, ns)
	}
	return handler(ctx, req)
}
