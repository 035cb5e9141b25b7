//go:build linux

package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// remountActive mounts again every snapshot that needs an overlay: after
// a restart, the earlier process's mounts died with it.
func (o *Snapshotter) remountActive(ctx context.Context) error {
	type activeSnapshot struct {
		s    storage.Snapshot
		info snapshots.Info
	}
	var active []activeSnapshot
	if err := o.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var infos []snapshots.Info
		if err := storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			if info.Kind != snapshots.KindCommitted {
				infos = append(infos, info)
			}
			return nil
		}); err != nil {
			if errdefs.IsNotFound(err) {
				return nil // a new root: no bucket yet
			}
			return err
		}
		for _, info := range infos {
			s, err := storage.GetSnapshot(ctx, info.Name)
			if err != nil {
				return fmt.Errorf("snapshot %q: %w", info.Name, err)
			}
			if needsOverlay(s, info) {
				active = append(active, activeSnapshot{s, info})
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("list snapshots to mount: %w", err)
	}

	mounted := 0
	for _, a := range active {
		// A snapshot that cannot be mounted now is retried by Mounts;
		// it must not keep the others from being served.
		if err := o.mountOverlay(ctx, a.s, a.info); err != nil {
			log.G(ctx).WithError(err).WithField("id", a.s.ID).Error("cannot mount snapshot again")
			continue
		}
		mounted++
	}
	if len(active) > 0 {
		log.G(ctx).Infof("mounted %d of %d snapshots again", mounted, len(active))
	}
	return nil
}

// detachStaleMounts detaches the FUSE mounts under snapshots/ whose server
// is gone. A mount under the root that still answers belongs to another
// live process, which must not share the root with us.
func (o *Snapshotter) detachStaleMounts(ctx context.Context) error {
	snapshotDir := filepath.Join(o.root, "snapshots")
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(snapshotDir))
	if err != nil {
		return fmt.Errorf("read mount table: %w", err)
	}
	// Deepest first, so that a mount is never detached before one on it.
	sort.Slice(infos, func(i, j int) bool { return len(infos[i].Mountpoint) > len(infos[j].Mountpoint) })
	for _, m := range infos {
		if m.Mountpoint == snapshotDir {
			continue
		}
		l := log.G(ctx).WithField("mountpoint", m.Mountpoint).WithField("fstype", m.FSType)
		if !strings.HasPrefix(m.FSType, "fuse") {
			l.Warn("unexpected mount under the snapshotter root, leaving it")
			continue
		}
		// statfs always reaches the server; stat may be answered from the
		// kernel's attribute cache even when the server is dead.
		var st unix.Statfs_t
		if err := unix.Statfs(m.Mountpoint, &st); err == nil {
			return fmt.Errorf("%s is served by a live process: is another snapshotter using %s?", m.Mountpoint, o.root)
		} else if !errors.Is(err, unix.ENOTCONN) && !errors.Is(err, unix.ECONNABORTED) {
			l.WithError(err).Warn("mount does not answer as a dead FUSE mount does; detaching it anyway")
		}
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("detach stale mount %s: %w", m.Mountpoint, err)
		}
		l.Info("detached stale mount left by an earlier process")
	}
	return nil
}
