//go:build linux

package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// UnmountAll ends for good every overlay mount under root that a stopped
// snapshotter left (to the keeper, or dead after a crash): each FUSE
// connection is aborted, so whatever still waits on it fails with
// ENOTCONN instead of waiting for a server, the mount is detached, and k
// (if not nil) drops all it holds. No snapshotter may run on root. It
// returns how many mounts it ended.
func UnmountAll(ctx context.Context, root string, k Keeper) (int, error) {
	snapshotDir := filepath.Join(root, "snapshots")
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(snapshotDir))
	if err != nil {
		return 0, fmt.Errorf("read mount table: %w", err)
	}
	// Deepest first, so that a mount is never detached before one on it.
	sort.Slice(infos, func(i, j int) bool { return len(infos[i].Mountpoint) > len(infos[j].Mountpoint) })
	var errs []error
	n := 0
	for _, m := range infos {
		if m.Mountpoint == snapshotDir || !strings.HasPrefix(m.FSType, "fuse") {
			continue
		}
		// Never stat it: a mount nobody serves blocks every request.
		if err := abortConnection(uint32(m.Minor)); err != nil {
			log.G(ctx).WithError(err).WithField("mountpoint", m.Mountpoint).Warn("cannot abort FUSE connection")
		}
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("detach %s: %w", m.Mountpoint, err))
			continue
		}
		n++
	}
	if k != nil {
		held, err := k.Held()
		if err != nil {
			errs = append(errs, err)
		}
		for key, h := range held {
			h.Close()
			if err := k.Drop(key); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return n, errors.Join(errs...)
}
