package main

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A request that panics fails with Internal; the process goes on.
func TestRecoverPanickingRequest(t *testing.T) {
	info := &grpc.UnaryServerInfo{FullMethod: "/containerd.services.snapshots.v1.Snapshots/Prepare"}
	_, err := recoverUnary(context.Background(), nil, info, func(context.Context, any) (any, error) {
		panic("bad request")
	})
	if status.Code(err) != codes.Internal {
		t.Fatalf("panicking request: %v, want Internal", err)
	}
	err = recoverStream(nil, stream{}, &grpc.StreamServerInfo{FullMethod: "/x/List"}, func(any, grpc.ServerStream) error {
		panic("bad stream")
	})
	if status.Code(err) != codes.Internal {
		t.Fatalf("panicking stream: %v, want Internal", err)
	}
}

type stream struct{ grpc.ServerStream }

func (stream) Context() context.Context { return context.Background() }
