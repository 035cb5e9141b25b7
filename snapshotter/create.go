//go:build linux

package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// Prepare creates an active snapshot on parent and mounts its overlay.
func (o *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return o.createSnapshot(ctx, snapshots.KindActive, key, parent, opts)
}

// View creates a read-only snapshot of parent.
func (o *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return o.createSnapshot(ctx, snapshots.KindView, key, parent, opts)
}

func (o *Snapshotter) createSnapshot(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (_ []mount.Mount, err error) {
	var (
		s        storage.Snapshot
		info     snapshots.Info
		td, path string
		mounted  bool
	)
	// Undo after a failure, including one in the transaction's own commit.
	defer func() {
		if err == nil {
			return
		}
		if mounted {
			if err1 := o.live.unmount(ctx, s.ID); err1 != nil {
				log.G(ctx).WithError(err1).WithField("id", s.ID).Error("cannot end overlay of failed snapshot")
				return // never remove directories under a live mount
			}
		}
		for _, dir := range []string{td, path} {
			if dir == "" {
				continue
			}
			if err1 := os.RemoveAll(dir); err1 != nil {
				log.G(ctx).WithError(err1).WithField("path", dir).Warn("cannot remove directory of failed snapshot")
			}
		}
	}()

	if err := o.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		snapshotDir := filepath.Join(o.root, "snapshots")
		if td, err = o.prepareDirectory(snapshotDir, kind); err != nil {
			return fmt.Errorf("create snapshot directory: %w", err)
		}
		if s, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...); err != nil {
			return fmt.Errorf("create snapshot %q: %w", key, err)
		}
		if _, info, _, err = storage.GetInfo(ctx, key); err != nil {
			return fmt.Errorf("create snapshot %q: %w", key, err)
		}
		ids, err := o.snapshotIDMapping(s, info)
		if err != nil {
			return fmt.Errorf("create snapshot %q: %w", key, err)
		}
		if len(s.ParentIDs) > 0 {
			// The root of the overlay shows the upper's owner: keep the
			// parent's, as kernel overlay snapshotters do, in the
			// upper layer's host ids under a mapping.
			if err := copyOwner(o.upperPath(s.ParentIDs[0]), filepath.Join(td, "fs"), ids); err != nil {
				return fmt.Errorf("create snapshot %q: %w", key, err)
			}
		}
		path = o.snapshotDir(s.ID)
		if err := os.Rename(td, path); err != nil {
			return fmt.Errorf("create snapshot directory: %w", err)
		}
		td = ""
		if err := o.mountOverlay(ctx, s, info); err != nil {
			return fmt.Errorf("create snapshot %q: %w", key, err)
		}
		mounted = needsOverlay(s, info)
		return nil
	}); err != nil {
		return nil, err
	}
	return o.mounts(s, info), nil
}

// prepareDirectory makes a snapshot's directories under a temporary name;
// it is renamed to the snapshot's id once the metadata has one.
func (o *Snapshotter) prepareDirectory(snapshotDir string, kind snapshots.Kind) (string, error) {
	td, err := os.MkdirTemp(snapshotDir, "new-")
	if err != nil {
		return "", err
	}
	if err := os.Mkdir(filepath.Join(td, "fs"), 0o755); err != nil {
		return td, err
	}
	if err := os.Mkdir(filepath.Join(td, "merged"), 0o755); err != nil {
		return td, err
	}
	if kind == snapshots.KindActive {
		if err := os.Mkdir(filepath.Join(td, "work"), 0o711); err != nil {
			return td, err
		}
	}
	return td, nil
}

func copyOwner(from, to string, ids idMapping) error {
	st, err := os.Stat(from)
	if err != nil {
		return fmt.Errorf("stat parent: %w", err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("stat parent %s: no owner", from)
	}
	uid, gid := sys.Uid, sys.Gid
	if ids.active() {
		var uok, gok bool
		uid, uok = overlayfuse.ToHostID(ids.uids, sys.Uid)
		gid, gok = overlayfuse.ToHostID(ids.gids, sys.Gid)
		if !uok || !gok {
			return fmt.Errorf("owner %d:%d of the image's root is outside the id mapping: %w", sys.Uid, sys.Gid, errdefs.ErrInvalidArgument)
		}
	}
	if err := os.Lchown(to, int(uid), int(gid)); err != nil {
		return fmt.Errorf("chown upper: %w", err)
	}
	return nil
}
