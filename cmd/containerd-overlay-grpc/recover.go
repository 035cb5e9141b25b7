package main

import (
	"context"
	"runtime/debug"

	"github.com/containerd/log"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// recoverUnary fails a request that panics with codes.Internal: the
// process serves every container's root filesystem and must not die for
// one bad request.
func recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer recovered(ctx, info.FullMethod, &err)
	return handler(ctx, req)
}

// recoverStream is recoverUnary for streaming requests (List).
func recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer recovered(ss.Context(), info.FullMethod, &err)
	return handler(srv, ss)
}

func recovered(ctx context.Context, method string, err *error) {
	if r := recover(); r != nil {
		log.G(ctx).WithField("method", method).WithField("panic", r).
			Errorf("request panicked; failing it\n%s", debug.Stack())
		*err = status.Errorf(codes.Internal, "%s panicked: %v", method, r)
	}
}
