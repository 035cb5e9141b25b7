//go:build linux

package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
)

// TestSnapshotterSuiteThroughDaemon runs containerd's conformance suite
// against the built daemon, through containerd's gRPC proxy snapshotter:
// one daemon per case, on the case's root.
func TestSnapshotterSuiteThroughDaemon(t *testing.T) {
	testutil.RequireFUSE(t)
	var (
		mu      sync.Mutex
		daemons []*daemon
	)
	// The suite stops each daemon itself; this catches any it could not.
	t.Cleanup(func() {
		for _, d := range daemons {
			endDaemon(t, d)
		}
	})
	testsuite.SnapshotterSuite(t, "overlayfuse", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		// The suite's temporary directory is short enough for a socket.
		addr := filepath.Join(filepath.Dir(root), "overlay.sock")
		d, err := startDaemon(root, addr)
		if err != nil {
			return nil, nil, err
		}
		mu.Lock()
		daemons = append(daemons, d)
		mu.Unlock()
		sn, closeConn, err := dial(addr)
		if err != nil {
			d.kill()
			return nil, nil, err
		}
		return sn, func() error {
			_ = closeConn()
			if err := d.stop(syscall.SIGTERM); err != nil {
				return err
			}
			// SIGTERM hands the mounts over to a next daemon; the suite
			// removes the root next, so end them.
			if out, err := exec.Command(daemonBin, "unmount-all", "--root", root).CombinedOutput(); err != nil {
				return fmt.Errorf("unmount-all: %v: %s", err, out)
			}
			return nil
		}, nil
	})
}
