//go:build linux

package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Remove abandons a snapshot. Its overlay ends at once; its directories go
// now, or at the next Cleanup with AsynchronousRemove. A snapshot with
// children cannot be removed (FailedPrecondition).
func (o *Snapshotter) Remove(ctx context.Context, key string) (err error) {
	var removals []string
	// Directories go after the transaction is committed; failing then
	// must not fail Remove, Cleanup will find what is left.
	defer func() {
		if err == nil {
			o.removeDirs(ctx, removals)
		}
	}()
	return o.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, _, err := storage.Remove(ctx, key)
		if err != nil {
			return fmt.Errorf("failed to remove snapshot %q: %w", key, err)
		}
		// Inside the transaction: if the mount cannot end, the snapshot
		// stays, and a concurrent Mounts cannot mount it again meanwhile.
		if err := o.live.unmount(ctx, id); err != nil {
			return fmt.Errorf("failed to remove snapshot %q: end its overlay: %w", key, err)
		}
		if !o.asyncRemove {
			if removals, err = o.unusedDirectories(ctx); err != nil {
				return fmt.Errorf("failed to remove snapshot %q: %w", key, err)
			}
		}
		return nil
	})
}

// Cleanup removes the directories of removed or abandoned snapshots.
func (o *Snapshotter) Cleanup(ctx context.Context) error {
	var dirs []string
	// A write transaction, so that no snapshot is created while scanning.
	if err := o.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		dirs, err = o.unusedDirectories(ctx)
		return err
	}); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	o.removeDirs(ctx, dirs)
	return nil
}

// unusedDirectories lists the directories under snapshots/ that belong to
// no snapshot in the metadata.
func (o *Snapshotter) unusedDirectories(ctx context.Context) ([]string, error) {
	ids, err := storage.IDMap(ctx)
	if err != nil {
		return nil, err
	}
	snapshotDir := filepath.Join(o.root, "snapshots")
	entries, err := os.ReadDir(snapshotDir)
	if err != nil {
		return nil, err
	}
	var unused []string
	for _, e := range entries {
		if _, ok := ids[e.Name()]; ok {
			continue
		}
		unused = append(unused, filepath.Join(snapshotDir, e.Name()))
	}
	return unused, nil
}

// removeDirs removes snapshot directories. A stale mount left on merged
// (by a crashed process) is detached first, so RemoveAll never walks into
// a mount.
func (o *Snapshotter) removeDirs(ctx context.Context, dirs []string) {
	for _, dir := range dirs {
		merged := filepath.Join(dir, "merged")
		if err := unix.Unmount(merged, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			log.G(ctx).WithError(err).WithField("path", merged).Warn("cannot detach stale mount; leaving directory")
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			log.G(ctx).WithError(err).WithField("path", dir).Warn("failed to remove directory")
		}
	}
}
