//go:build linux

// Package differ is containerd's diff service (diff.Comparer and
// diff.Applier) for overlayfuse snapshots, served by the daemon next to
// the snapshotter. It never goes through the FUSE overlay: Compare reads
// the changes from the snapshot's upper dir, which is in overlayfs'
// format (whiteouts, opaque directories), and Apply writes a layer
// straight into the upper dir of a fresh snapshot. Mounts that are not
// ours are ErrNotImplemented, so containerd falls through to its walking
// differ.
package differ

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"

	"github.com/overlayfuse/overlayfuse/snapshotter"
)

// leaseExpiry is how long a layer written by Compare is kept from
// containerd's garbage collector: the caller's lease does not reach a
// proxy differ, and the caller references the layer (in an image, in
// BuildKit's cache) long before.
const leaseExpiry = time.Hour

// Snapshotter is what the differ needs of the snapshotter.
type Snapshotter interface {
	LayersOf(mounts []mount.Mount) (snapshotter.Layers, error)
	TakeForApply(ctx context.Context, mounts []mount.Mount) (snapshotter.Layers, error)
}

// Differ compares and applies layers of overlayfuse snapshots.
type Differ struct {
	sn     Snapshotter
	store  content.Store
	leases leases.Manager
}

var (
	_ diff.Comparer = (*Differ)(nil)
	_ diff.Applier  = (*Differ)(nil)
)

// Opt configures a Differ.
type Opt func(*Differ)

// WithLeases holds each layer Compare writes under a lease of its own,
// made with m, that expires after an hour.
func WithLeases(m leases.Manager) Opt {
	return func(d *Differ) { d.leases = m }
}

// New returns a differ for the snapshots of sn that reads and writes
// layers in store.
func New(sn Snapshotter, store content.Store, opts ...Opt) *Differ {
	d := &Differ{sn: sn, store: store}
	for _, o := range opts {
		o(d)
	}
	return d
}

// withLease returns ctx under a new lease that expires by itself.
func (d *Differ) withLease(ctx context.Context) (context.Context, error) {
	if d.leases == nil {
		return ctx, nil
	}
	l, err := d.leases.Create(ctx, leases.WithRandomID(), leases.WithExpiration(leaseExpiry))
	if err != nil {
		return nil, fmt.Errorf("create lease: %w", err)
	}
	return leases.WithLease(ctx, l.ID), nil
}
