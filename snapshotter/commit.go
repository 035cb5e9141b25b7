//go:build linux

package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// Commit turns the active snapshot key into the committed snapshot name.
// Its overlay is unmounted first, so that no writer can change the
// directory once it is a lower layer of other snapshots. A caller may
// still hold the mounts it got while the snapshot was active (BuildKit
// mounts a finished step read-only that way, for COPY --from and for the
// layer's diff), so the same tree is then served again, read-only, at the
// same place, until the snapshot is removed.
func (o *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return o.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return fmt.Errorf("commit snapshot %q: %w", key, err)
		}
		if info.Kind != snapshots.KindActive {
			return fmt.Errorf("commit snapshot %q: it is %v, not active: %w", key, info.Kind, errdefs.ErrFailedPrecondition)
		}
		s, err := storage.GetSnapshot(ctx, key)
		if err != nil {
			return fmt.Errorf("commit snapshot %q: %w", key, err)
		}
		wasMounted := o.live.has(id)
		if err := o.live.unmount(ctx, id); err != nil {
			return fmt.Errorf("commit snapshot %q: end its overlay: %w", key, err)
		}
		if isChownCopy(info) {
			if err := os.WriteFile(filepath.Join(o.snapshotDir(id), chownedCopyMark), nil, 0o600); err != nil {
				return fmt.Errorf("commit snapshot %q: mark the chowned copy: %w", key, err)
			}
		}
		usage, err := fs.DiskUsage(ctx, o.upperPath(id))
		if err == nil {
			_, err = storage.CommitActive(ctx, key, name, snapshots.Usage(usage), opts...)
		}
		if err != nil {
			// The snapshot stays active: give it its overlay back.
			if s, err1 := storage.GetSnapshot(ctx, key); err1 == nil {
				if err1 := o.mountOverlay(ctx, s, info); err1 != nil {
					log.G(ctx).WithError(err1).WithField("key", key).Warn("cannot mount again after failed commit; Mounts will retry")
				}
			}
			return fmt.Errorf("commit snapshot %q as %q: %w", key, name, err)
		}
		if wasMounted {
			layers := overlayfuse.Layers{Lower: append([]string{o.upperPath(id)}, o.upperPaths(s.ParentIDs)...)}
			if err := o.live.mount(ctx, id, o.mergedPath(id), layers, mountParams{readOnly: true}); err != nil {
				log.G(ctx).WithError(err).WithField("key", key).Warn("cannot serve committed snapshot read-only at its old mountpoint")
			}
		}
		return nil
	})
}
