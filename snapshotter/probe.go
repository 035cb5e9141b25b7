//go:build linux

package snapshotter

import (
	"context"
	"errors"
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
	// With an id mapping first: whether snapshots with one can be served.
	opts := o.live.opts
	opts.ReadOnly = true
	opts.UIDMap = []overlayfuse.IDMapping{{ContainerID: 0, HostID: 0, Size: 1}}
	opts.GIDMap = opts.UIDMap
	srv, err := overlayfuse.Mount(merged, overlayfuse.Layers{Lower: []string{lower}}, opts)
	o.idmap = err == nil
	if errors.Is(err, overlayfuse.ErrIDMapUnsupported) {
		opts.UIDMap, opts.GIDMap = nil, nil
		srv, err = overlayfuse.Mount(merged, overlayfuse.Layers{Lower: []string{lower}}, opts)
	}
	if err != nil {
		return fmt.Errorf("cannot mount a FUSE overlay on this host: %w", err)
	}
	passthrough := srv.PassthroughActive()
	if err := srv.Unmount(); err != nil {
		return fmt.Errorf("unmount probe overlay: %w", err)
	}
	// Validated in NewSnapshotter; this names the default.
	consistency, _ := overlayfuse.ParseConsistency(string(opts.Consistency))
	l := log.G(ctx).WithField("passthrough", passthrough).
		WithField("consistency", consistency).WithField("remap-ids", o.idmap)
	l.Info("FUSE overlay works")
	if !o.idmap {
		l.Warn("this kernel cannot idmap FUSE mounts (Linux 6.12 can): snapshots with an id mapping are refused; leave remap-ids out of the proxy plugin's capabilities")
	}
	return nil
}
