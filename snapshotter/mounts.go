//go:build linux

package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// Mounts returns the mounts of an active snapshot or a view: the same
// answer Prepare or View gave. A committed snapshot has none (NotFound).
func (o *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var s storage.Snapshot
	var info snapshots.Info
	if err := o.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		s, info, err = o.getActive(ctx, key)
		return err
	}); err != nil {
		return nil, fmt.Errorf("mounts of snapshot %q: %w", key, err)
	}
	if needsOverlay(s, info) && !o.live.has(s.ID) {
		// Mounting at restart failed, or a failed Commit could not mount
		// again: mount now. The write transaction orders this against a
		// concurrent Remove, which unmounts inside its own.
		if err := o.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
			if s, info, err = o.getActive(ctx, key); err != nil {
				return err
			}
			return o.mountOverlay(ctx, s, info)
		}); err != nil {
			return nil, fmt.Errorf("mounts of snapshot %q: %w", key, err)
		}
	}
	return o.mounts(s, info), nil
}

// getActive returns the active snapshot or view key. Committed snapshots
// are reported as NotFound, as they have no mounts.
func (o *Snapshotter) getActive(ctx context.Context, key string) (storage.Snapshot, snapshots.Info, error) {
	_, info, _, err := storage.GetInfo(ctx, key)
	if err != nil {
		return storage.Snapshot{}, info, err
	}
	if info.Kind == snapshots.KindCommitted {
		return storage.Snapshot{}, info, fmt.Errorf("snapshot %q is committed and has no mounts: %w", key, errdefs.ErrNotFound)
	}
	s, err := storage.GetSnapshot(ctx, key)
	return s, info, err
}

// unpackLabel marks the snapshots containerd's unpacker prepares to apply
// a layer into.
const unpackLabel = "containerd.io/snapshot.ref"

// isUnpack reports whether s is a layer being unpacked. containerd's
// applier writes into the upperdir of a lone overlay mount without
// mounting it (core/diff/apply), so an unpack needs no FUSE mount: the
// layer lands on disk in overlayfs' format, which is ours, at disk speed.
// The transfer service's unpacker labels its snapshots; the client's
// (ctr images mount, nerdctl load) only names them "extract-… <chainID>",
// behind the namespace's "<ns>/<n>/" in our keys.
func isUnpack(s storage.Snapshot, info snapshots.Info) bool {
	if s.Kind != snapshots.KindActive || len(s.ParentIDs) == 0 {
		return false
	}
	if _, ok := info.Labels[unpackLabel]; ok {
		return true
	}
	return strings.HasPrefix(path.Base(info.Name), snapshots.UnpackKeyPrefix+"-") || isChownCopy(info)
}

// isChownCopy reports whether s is the chowned copy of an image that
// containerd's client makes for a user namespace where the snapshotter
// lacks remap-ids (client.resolveSnapshotOptions: Prepare
// "<digest>-remap", a walk that lchowns every name, Commit). The walk maps
// each name's owner afresh, so the second name of a hard link must still
// show the image's owner after the first was chowned: it does on kernel
// overlayfs, which copies up one name and splits the link, and cannot on
// our FUSE overlay, which keeps a hard link one file (a FUSE SETATTR
// names an inode, not the name it came through). containerd mounts the
// overlay answer itself, and the copy lands in our format, as containerd's
// overlayfs snapshotter leaves it.
func isChownCopy(info snapshots.Info) bool {
	base := path.Base(info.Name)
	return info.Kind == snapshots.KindActive && !hasIDMapping(info) &&
		strings.HasPrefix(base, "sha256:") && strings.HasSuffix(base, "-remap")
}

// needsOverlay reports whether s is served by a FUSE overlay. A snapshot
// without parents is its own directory, and a view of one layer is that
// layer: both are plain bind mounts. An unpack writes into its directory.
func needsOverlay(s storage.Snapshot, info snapshots.Info) bool {
	switch {
	case len(s.ParentIDs) == 0:
		return false
	case isUnpack(s, info):
		return false
	case s.Kind == snapshots.KindView && len(s.ParentIDs) == 1:
		// A layer is never idmapped by the kernel: a view with an id
		// mapping gets an overlay that can be.
		return hasIDMapping(info)
	}
	return true
}

func hasIDMapping(info snapshots.Info) bool {
	_, uok := info.Labels[snapshots.LabelSnapshotUIDMapping]
	_, gok := info.Labels[snapshots.LabelSnapshotGIDMapping]
	return uok || gok
}

// mounts is what containerd mounts for s: one bind mount, or for an
// unpack one overlay mount that containerd writes into without mounting.
func (o *Snapshotter) mounts(s storage.Snapshot, info snapshots.Info) []mount.Mount {
	if isUnpack(s, info) {
		lower := o.upperPaths(s.ParentIDs)
		return []mount.Mount{{
			Type:   "overlay",
			Source: "overlay",
			Options: []string{
				"index=off",
				"workdir=" + o.workPath(s.ID),
				"upperdir=" + o.upperPath(s.ID),
				"lowerdir=" + strings.Join(lower, ":"),
			},
		}}
	}
	// With uidmap= and gidmap= containerd idmaps the bind mount once it
	// is made (core/mount), as it does overlayfs' lower layers for its
	// own snapshotter; the overlay serves it in the mapping's ids.
	var options []string
	if o.idMapped(s, info) {
		options = append(options,
			"uidmap="+info.Labels[snapshots.LabelSnapshotUIDMapping],
			"gidmap="+info.Labels[snapshots.LabelSnapshotGIDMapping])
	}
	rw := "rw"
	if s.Kind == snapshots.KindView && (len(options) == 0 || len(s.ParentIDs) == 0) {
		// containerd skips the idmap of a read-only bind mount; a view
		// with a mapping is read-only in its FUSE mount instead.
		rw = "ro"
	}
	source := o.mergedPath(s.ID)
	switch {
	case len(s.ParentIDs) == 0:
		source = o.upperPath(s.ID)
	case !needsOverlay(s, info):
		source = o.upperPath(s.ParentIDs[0])
	}
	return []mount.Mount{{
		Type:    "bind",
		Source:  source,
		Options: append(options, "rbind", rw),
	}}
}

// mountOverlay mounts the FUSE overlay of s at its merged directory.
func (o *Snapshotter) mountOverlay(ctx context.Context, s storage.Snapshot, info snapshots.Info) error {
	if !needsOverlay(s, info) {
		return nil
	}
	layers, p, err := o.overlayLayers(s, info)
	if err != nil {
		return err
	}
	// A root made by an older version may lack the mountpoint.
	merged := o.mergedPath(s.ID)
	if err := os.Mkdir(merged, 0o755); err != nil && !os.IsExist(err) {
		return err
	}
	return o.live.mount(ctx, s.ID, merged, layers, p)
}

// resumeOverlay takes over the kept overlay mount of s, with the layers
// and mapping it was mounted with.
func (o *Snapshotter) resumeOverlay(ctx context.Context, s storage.Snapshot, info snapshots.Info, hm *heldMount) error {
	layers, p, err := o.overlayLayers(s, info)
	if err != nil {
		return err
	}
	return o.live.resumeMount(ctx, s.ID, o.mergedPath(s.ID), layers, p, hm.dev, hm.h)
}

// overlayLayers are the layers and mount parameters of the overlay of s.
func (o *Snapshotter) overlayLayers(s storage.Snapshot, info snapshots.Info) (overlayfuse.Layers, mountParams, error) {
	// ParentIDs lists the nearest parent first, as overlayfuse wants.
	layers := overlayfuse.Layers{Lower: o.upperPaths(s.ParentIDs)}
	readOnly := s.Kind == snapshots.KindView
	if !readOnly {
		layers.Upper = o.upperPath(s.ID)
		layers.Work = o.workPath(s.ID)
	}
	ids, err := o.snapshotIDMapping(s, info)
	if err != nil {
		return layers, mountParams{}, err
	}
	if ids.active() && !o.idmap {
		return layers, mountParams{}, fmt.Errorf("snapshot has an id mapping: %w: %w (remove remap-ids from the proxy plugin's capabilities, so that containerd makes a chowned copy instead)",
			overlayfuse.ErrIDMapUnsupported, errdefs.ErrNotImplemented)
	}
	return layers, mountParams{readOnly: readOnly, uidMap: ids.uids, gidMap: ids.gids}, nil
}
