//go:build linux

package snapshotter

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// idMapping is a snapshot's user namespace mapping, from the labels
// containerd sets on Prepare and View where the snapshotter advertises
// remap-ids (client.WithRemapperLabels, the CRI plugin's pods with
// hostUsers: false, nerdctl --userns-remap).
type idMapping struct {
	uids, gids []overlayfuse.IDMapping
}

func (m idMapping) active() bool { return len(m.uids) > 0 }

// chownedCopyMark, in a snapshot's directory, marks the client's chowned
// copy of an image (isChownCopy) once committed.
const chownedCopyMark = "chowned-copy"

// idMapped reports whether s is served idmapped: it has the mapping labels
// and its parent is not a chowned copy. The client labels the container's
// snapshot on the chowned copy too, as it does not know which way the
// snapshotter went; containerd's overlayfs snapshotter without remap-ids
// ignores the labels there, and so do we.
func (o *Snapshotter) idMapped(s storage.Snapshot, info snapshots.Info) bool {
	if !hasIDMapping(info) {
		return false
	}
	if len(s.ParentIDs) == 0 {
		return true
	}
	_, err := os.Lstat(filepath.Join(o.snapshotDir(s.ParentIDs[0]), chownedCopyMark))
	return err != nil
}

// snapshotIDMapping is the mapping s is served with (idMapped); none
// without one.
func (o *Snapshotter) snapshotIDMapping(s storage.Snapshot, info snapshots.Info) (idMapping, error) {
	if !o.idMapped(s, info) {
		return idMapping{}, nil
	}
	return parseIDMappingLabels(info)
}

// parseIDMappingLabels reads the mapping labels of info; neither is no
// mapping. containerd idmaps a mount only with both.
func parseIDMappingLabels(info snapshots.Info) (idMapping, error) {
	u, uok := info.Labels[snapshots.LabelSnapshotUIDMapping]
	g, gok := info.Labels[snapshots.LabelSnapshotGIDMapping]
	if !uok && !gok {
		return idMapping{}, nil
	}
	if !uok || !gok {
		return idMapping{}, fmt.Errorf("labels %s and %s go together: %w",
			snapshots.LabelSnapshotUIDMapping, snapshots.LabelSnapshotGIDMapping, errdefs.ErrInvalidArgument)
	}
	var m idMapping
	var err error
	if m.uids, err = parseIDMapping(u); err != nil {
		return idMapping{}, fmt.Errorf("label %s: %w: %w", snapshots.LabelSnapshotUIDMapping, err, errdefs.ErrInvalidArgument)
	}
	if m.gids, err = parseIDMapping(g); err != nil {
		return idMapping{}, fmt.Errorf("label %s: %w: %w", snapshots.LabelSnapshotGIDMapping, err, errdefs.ErrInvalidArgument)
	}
	o := overlayfuse.Options{UIDMap: m.uids, GIDMap: m.gids}
	if err := o.Validate(); err != nil {
		return idMapping{}, fmt.Errorf("id mapping labels: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	return m, nil
}

// parseIDMapping parses containerd's "container:host:size[,…]".
func parseIDMapping(s string) ([]overlayfuse.IDMapping, error) {
	var ms []overlayfuse.IDMapping
	for _, e := range strings.Split(s, ",") {
		f := strings.Split(e, ":")
		if len(f) != 3 {
			return nil, fmt.Errorf("%q: want container-id:host-id:size", e)
		}
		var v [3]uint32
		for i, x := range f {
			n, err := strconv.ParseUint(x, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("%q: %w", e, err)
			}
			v[i] = uint32(n)
		}
		ms = append(ms, overlayfuse.IDMapping{ContainerID: v[0], HostID: v[1], Size: v[2]})
	}
	return ms, nil
}
