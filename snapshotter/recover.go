//go:build linux

package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// remountActive serves again every snapshot that needs an overlay: it
// resumes the mounts an earlier process left to the keeper, and mounts
// again the others (whose mounts died with that process). Held mounts of
// snapshots that no longer need one are discarded.
func (o *Snapshotter) remountActive(ctx context.Context, held heldMounts) error {
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

	mounted, resumed := 0, 0
	for _, a := range active {
		if hm, ok := held.take(a.s.ID); ok {
			err := o.resumeOverlay(ctx, a.s, a.info, hm)
			if err == nil {
				hm.h.Close()
				resumed++
				continue
			}
			// What its users were doing fails: mounted again below.
			log.G(ctx).WithError(err).WithField("id", a.s.ID).Error("cannot take over kept mount; mounting it again")
			o.discard(ctx, a.s.ID, hm)
		}
		// A snapshot that cannot be mounted now is retried by Mounts;
		// it must not keep the others from being served.
		if err := o.mountOverlay(ctx, a.s, a.info); err != nil {
			log.G(ctx).WithError(err).WithField("id", a.s.ID).Error("cannot mount snapshot again")
			continue
		}
		mounted++
	}
	held.discardAll(ctx, o)
	if len(active) > 0 {
		log.G(ctx).Infof("resumed %d and mounted again %d of %d snapshots", resumed, mounted, len(active))
	}
	return nil
}

// detachStaleMounts detaches the FUSE mounts under snapshots/ whose server
// is gone, but for those held by the keeper (left for remountActive to
// resume); held mounts whose mount is gone are dropped. A mount under the
// root that still answers belongs to another live process, which must not
// share the root with us.
func (o *Snapshotter) detachStaleMounts(ctx context.Context, held heldMounts) error {
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
		dev := unix.Mkdev(uint32(m.Major), uint32(m.Minor))
		if held.match(o, m.Mountpoint, dev) {
			continue
		}
		switch err := statfsWithin(m.Mountpoint, statfsTimeout); {
		case err == nil:
			return fmt.Errorf("%s is served by a live process: is another snapshotter using %s?", m.Mountpoint, o.root)
		case errors.Is(err, errNoAnswer):
			// A connection someone holds but nobody serves, not ours.
			l.Warn("mount does not answer: aborting its FUSE connection")
			if err := abortConnection(uint32(m.Minor)); err != nil {
				l.WithError(err).Warn("cannot abort FUSE connection")
			}
		case !errors.Is(err, unix.ENOTCONN) && !errors.Is(err, unix.ECONNABORTED):
			l.WithError(err).Warn("mount does not answer as a dead FUSE mount does; detaching it anyway")
		}
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("detach stale mount %s: %w", m.Mountpoint, err)
		}
		l.Info("detached stale mount left by an earlier process")
	}
	// Gone at reboot, or unmounted while no process served it.
	for id, hm := range held {
		if !hm.mounted {
			o.discard(ctx, id, hm)
			delete(held, id)
		}
	}
	return nil
}

// statfsTimeout bounds the wait for a mount's server at start.
const statfsTimeout = 2 * time.Second

// errNoAnswer: the mount's server did not answer in time.
var errNoAnswer = errors.New("no answer")

// statfsWithin is statfs(2), which always reaches the server (stat may be
// answered from the kernel's attribute cache even when the server is
// dead), given up after timeout: on a connection that is held but not
// served it blocks until the connection ends.
func statfsWithin(path string, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() {
		var st unix.Statfs_t
		done <- unix.Statfs(path, &st)
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		return errNoAnswer
	}
}
