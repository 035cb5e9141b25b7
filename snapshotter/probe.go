//go:build linux

package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/log"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// probe mounts one empty overlay with the configured options, so that a
// host without FUSE, or without passthrough under passthrough=on, fails at
// start instead of at the first container. It also tells the operator
// once whether passthrough is in use. The probe lives under snapshots/, so
// one left by a crash is detached and removed like any stale snapshot.
func (o *Snapshotter) probe(ctx context.Context) error {
	dir, err := os.MkdirTemp(filepath.Join(o.root, "snapshots"), "probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lower, merged := filepath.Join(dir, "fs"), filepath.Join(dir, "merged")
	for _, d := range []string{lower, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	opts := o.live.opts
	opts.ReadOnly = true
	srv, err := overlayfuse.Mount(merged, overlayfuse.Layers{Lower: []string{lower}}, opts)
	if err != nil {
		return fmt.Errorf("cannot mount a FUSE overlay on this host: %w", err)
	}
	passthrough := srv.PassthroughActive()
	if err := srv.Unmount(); err != nil {
		return fmt.Errorf("unmount probe overlay: %w", err)
	}
	// Validated in NewSnapshotter; this names the default.
	consistency, _ := overlayfuse.ParseConsistency(string(opts.Consistency))
	log.G(ctx).WithField("passthrough", passthrough).
		WithField("consistency", consistency).Info("FUSE overlay works")
	return nil
}
