//go:build linux

package snapshotter

import (
	"context"
	"errors"
	"path/filepath"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// heldMount is a mount an earlier process left to the keeper.
type heldMount struct {
	key string
	dev uint64
	h   overlayfuse.Handover
	// mounted: the connection is the one mounted at the snapshot's
	// merged directory, found in the mount table.
	mounted bool
}

// heldMounts are the kept mounts found at start, by snapshot id, until
// each is resumed or discarded.
type heldMounts map[string]*heldMount

// heldMounts asks the keeper what an earlier process left it. Without
// them every mount is mounted again, as after a crash without a keeper.
func (o *Snapshotter) heldMounts(ctx context.Context) heldMounts {
	held := heldMounts{}
	k := o.live.keeper
	if k == nil {
		return held
	}
	got, err := k.Held()
	if err != nil {
		log.G(ctx).WithError(err).Error("cannot list the mounts the keeper holds; mounting every snapshot again")
		return held
	}
	for key, h := range got {
		id, dev, err := parseKeeperKey(key)
		if err != nil {
			log.G(ctx).WithError(err).Warn("dropping kept mount")
			o.discard(ctx, "", &heldMount{key: key, h: h})
			continue
		}
		held[id] = &heldMount{key: key, dev: dev, h: h}
	}
	return held
}

// match reports whether the mount at mountpoint, of device dev, is a held
// connection, and marks it mounted. The device number comes from the
// mount table: a stat of a mount nobody serves would block.
func (held heldMounts) match(o *Snapshotter, mountpoint string, dev uint64) bool {
	id, ok := o.mergedID(mountpoint)
	if !ok {
		return false
	}
	hm, ok := held[id]
	if !ok || hm.dev != dev {
		return false
	}
	hm.mounted = true
	return true
}

// take removes the held mount of snapshot id, if it is still mounted.
func (held heldMounts) take(id string) (*heldMount, bool) {
	hm, ok := held[id]
	if !ok || !hm.mounted {
		return nil, false
	}
	delete(held, id)
	return hm, true
}

// close closes the files of the held mounts not taken, which stay held
// for the next start.
func (held heldMounts) close() {
	for _, hm := range held {
		hm.h.Close()
	}
}

// discardAll discards every held mount not taken.
func (held heldMounts) discardAll(ctx context.Context, o *Snapshotter) {
	for id, hm := range held {
		o.discard(ctx, id, hm)
		delete(held, id)
	}
}

// discard ends a held mount that will not be served again: its mount (if
// still there) is detached, and once the keeper and we let go of the
// connection the kernel ends it, failing whatever still waits on it.
func (o *Snapshotter) discard(ctx context.Context, id string, hm *heldMount) {
	l := log.G(ctx).WithField("kept", hm.key)
	if hm.mounted {
		merged := o.mergedPath(id)
		if err := unix.Unmount(merged, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			l.WithError(err).Warn("cannot detach kept mount")
		}
	}
	if err := o.live.keeper.Drop(hm.key); err != nil {
		l.WithError(err).Warn("cannot drop kept mount")
	}
	hm.h.Close()
	l.Info("dropped kept mount")
}

// mergedID returns the snapshot id whose merged directory is mountpoint.
func (o *Snapshotter) mergedID(mountpoint string) (string, bool) {
	dir, base := filepath.Split(mountpoint)
	if base != "merged" {
		return "", false
	}
	id := filepath.Base(dir)
	return id, o.mergedPath(id) == mountpoint
}
