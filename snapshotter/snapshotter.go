//go:build linux

// Package snapshotter is a containerd snapshotter that serves every active
// snapshot through its own overlayfuse mount. Containerd gets one bind
// mount of that FUSE overlay, so it never needs kernel overlayfs, and an
// image may have any number of layers.
//
// On disk, under root:
//
//	metadata.db             containerd's snapshot metadata (bbolt)
//	snapshots/<id>/fs       the snapshot's own changes (upper, later a lower layer)
//	snapshots/<id>/work     scratch directory of the overlay's copy-ups
//	snapshots/<id>/merged   where the overlay is mounted
package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

const defaultUnmountTimeout = 5 * time.Second

// Snapshotter is the overlayfuse snapshotter. Besides
// snapshots.Snapshotter it implements snapshots.Cleaner.
type Snapshotter struct {
	root        string
	ms          *storage.MetaStore
	asyncRemove bool
	live        *liveMounts
	logWriter   io.Closer
	// idmap: the kernel idmaps FUSE mounts, so snapshots with an id
	// mapping can be served (probe).
	idmap bool

	closeOnce sync.Once
	closeErr  error
}

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// NewSnapshotter opens (or creates) a snapshotter at root. Mounts left by an
// earlier process are detached and every snapshot that was mounted is
// mounted again, so active snapshots survive a restart of the daemon.
// Only one snapshotter may use a root at a time.
func NewSnapshotter(root string, opts ...Opt) (*Snapshotter, error) {
	c := config{unmountTimeout: defaultUnmountTimeout}
	for _, opt := range opts {
		if err := opt(&c); err != nil {
			return nil, fmt.Errorf("snapshotter option: %w", err)
		}
	}
	mountOpts := overlayfuse.Options{
		Passthrough: c.passthrough,
		Consistency: c.consistency,
		FsName:      "overlayfuse",
		Debug:       c.fuseDebug,
		Metrics:     c.metrics,
	}
	// Before anything is made at root.
	if err := mountOpts.Validate(); err != nil {
		return nil, fmt.Errorf("snapshotter option: %w: %w", err, errdefs.ErrInvalidArgument)
	}

	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	// Stale mounts are found by path in mountinfo, which shows real paths.
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	if root, err = filepath.EvalSymlinks(root); err != nil {
		return nil, err
	}
	supportsDType, err := fs.SupportsDType(root)
	if err != nil {
		return nil, err
	}
	if !supportsDType {
		return nil, fmt.Errorf("%s does not support d_type, which overlay whiteouts need", root)
	}
	if err := os.Mkdir(filepath.Join(root, "snapshots"), 0o700); err != nil && !os.IsExist(err) {
		return nil, err
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("open metadata: %w", err)
	}

	// overlayfuse logs through the standard logger; hand it to ours.
	w := log.L.WithField("component", "overlayfuse").WriterLevel(log.InfoLevel)
	mountOpts.Logger = stdlog.New(w, "", 0)
	s := &Snapshotter{
		root:        root,
		ms:          ms,
		asyncRemove: c.asyncRemove,
		logWriter:   w,
		live:        newLiveMounts(mountOpts, c.unmountTimeout, c.keeper),
	}
	if c.resume != nil {
		s.live.resume = c.resume
	}
	// An earlier process that ended without unmounting left its mounts:
	// those it handed to the keeper are taken over, the others are dead
	// (ENOTCONN). Detach the dead ones, check that FUSE works, and serve
	// again every snapshot that was served.
	ctx := context.Background()
	held := s.heldMounts(ctx)
	// Held mounts not taken over on a failed start stay held for the next.
	defer held.close()
	for _, step := range []func(context.Context) error{
		func(ctx context.Context) error { return s.detachStaleMounts(ctx, held) },
		s.probe,
		func(ctx context.Context) error { return s.remountActive(ctx, held) },
	} {
		if err := step(ctx); err != nil {
			_ = s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Stat returns the info for an active or committed snapshot by name or key.
func (o *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = o.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil {
		return snapshots.Info{}, fmt.Errorf("stat snapshot %q: %w", key, err)
	}
	return info, nil
}

// Update changes the labels of a snapshot; other fields are immutable.
func (o *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (newInfo snapshots.Info, err error) {
	err = o.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		newInfo, err = storage.UpdateInfo(ctx, info, fieldpaths...)
		return err
	})
	if err != nil {
		return snapshots.Info{}, fmt.Errorf("update snapshot %q: %w", info.Name, err)
	}
	return newInfo, nil
}

// Usage returns the resources taken by a snapshot. For an active snapshot
// it scans its upper directory; for a committed one it returns what Commit
// recorded.
func (o *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	if err := o.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		return snapshots.Usage{}, fmt.Errorf("usage of snapshot %q: %w", key, err)
	}
	if info.Kind == snapshots.KindActive {
		du, err := fs.DiskUsage(ctx, o.upperPath(id))
		if err != nil {
			return snapshots.Usage{}, fmt.Errorf("usage of snapshot %q: %w", key, err)
		}
		usage = snapshots.Usage(du)
	}
	return usage, nil
}

// Walk calls fn for every snapshot that matches the filters.
func (o *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return o.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, filters...)
	})
}

// Close ends every mount of this snapshotter (and drops it from the
// keeper) and closes the metadata. Calling it again, or after HandOver,
// does nothing.
func (o *Snapshotter) Close() error {
	o.closeOnce.Do(func() {
		ctx := context.Background()
		n := o.live.count()
		err := o.live.unmountAll(ctx)
		if err != nil {
			log.G(ctx).WithError(err).Error("ending overlay mounts")
		} else if n > 0 {
			log.G(ctx).WithField("count", n).Info("ended overlay mounts")
		}
		o.closeErr = errors.Join(err, o.ms.Close(), o.logWriter.Close())
	})
	return o.closeErr
}

// HandOver closes the snapshotter for the next process on its root: it
// stops serving every mount the keeper holds, which stays mounted (its
// requests wait in the kernel until the next process takes it over), ends
// the others, and closes the metadata. Calling it again, or after Close,
// does nothing.
func (o *Snapshotter) HandOver() error {
	o.closeOnce.Do(func() {
		ctx := context.Background()
		n := o.live.count()
		err := o.live.handOver(ctx)
		if err != nil {
			log.G(ctx).WithError(err).Error("handing over overlay mounts")
		} else if n > 0 {
			log.G(ctx).WithField("count", n).Info("handed over overlay mounts")
		}
		o.closeErr = errors.Join(err, o.ms.Close(), o.logWriter.Close())
	})
	return o.closeErr
}

// Root is the directory the snapshotter keeps its state in.
func (o *Snapshotter) Root() string { return o.root }

// ActiveMounts is the number of overlay mounts this process serves.
func (o *Snapshotter) ActiveMounts() int { return o.live.count() }

func (o *Snapshotter) snapshotDir(id string) string {
	return filepath.Join(o.root, "snapshots", id)
}

func (o *Snapshotter) upperPath(id string) string {
	return filepath.Join(o.root, "snapshots", id, "fs")
}

// upperPaths maps snapshot ids to their layer directories.
func (o *Snapshotter) upperPaths(ids []string) []string {
	dirs := make([]string, len(ids))
	for i, id := range ids {
		dirs[i] = o.upperPath(id)
	}
	return dirs
}

func (o *Snapshotter) workPath(id string) string {
	return filepath.Join(o.root, "snapshots", id, "work")
}

func (o *Snapshotter) mergedPath(id string) string {
	return filepath.Join(o.root, "snapshots", id, "merged")
}
