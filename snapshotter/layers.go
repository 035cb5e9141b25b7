//go:build linux

package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
)

// Layers is what one of our mount lists shows: the directories of its
// layers on disk, so that a differ can read and write them without going
// through the FUSE overlay.
type Layers struct {
	// Upper is the writable upper dir of an active snapshot, else "".
	Upper string
	// Lower lists the read-only layers, the nearest first.
	Lower []string
	// Root is where the merged tree can be read: the overlay's mountpoint,
	// or the one layer of a mount without an overlay; "" for no mounts.
	Root string
}

// Chain lists every layer directory, the top first.
func (l Layers) Chain() []string {
	if l.Upper == "" {
		return l.Lower
	}
	return append([]string{l.Upper}, l.Lower...)
}

// LayersOf maps a mount list that this snapshotter handed out (Prepare,
// View, Mounts) back to its layer directories. The mount source must be
// exactly one of our mountpoints or layer directories, as we computed it:
// nothing is resolved through a path a container could have written.
// Mounts that are not ours (other snapshotters, unpack overlay mounts)
// are ErrNotImplemented, so that a differ falls through to the next.
func (o *Snapshotter) LayersOf(mounts []mount.Mount) (Layers, error) {
	switch {
	case len(mounts) == 0:
		return Layers{}, nil
	case len(mounts) > 1 || mounts[0].Type != "bind":
		return Layers{}, fmt.Errorf("not an overlayfuse mount: %w", errdefs.ErrNotImplemented)
	}
	source := mounts[0].Source
	if _, layers, readOnly, ok := o.live.at(source); ok {
		l := Layers{Lower: slices.Clone(layers.Lower), Root: source}
		if !readOnly {
			l.Upper = layers.Upper
		}
		return l, nil
	}
	// A bind mount of one layer: a snapshot without parents, or a view
	// of one. Such a layer has no parents itself.
	if id, ok := o.layerID(source); ok {
		if fi, err := os.Lstat(source); err != nil || !fi.IsDir() {
			return Layers{}, fmt.Errorf("layer %s of snapshot %s: not a directory: %w", source, id, errdefs.ErrNotFound)
		}
		l := Layers{Lower: []string{source}, Root: source}
		if !slices.Contains(mounts[0].Options, "ro") {
			l = Layers{Upper: source, Root: source}
		}
		return l, nil
	}
	return Layers{}, fmt.Errorf("mount of %s is not an overlayfuse snapshot: %w", source, errdefs.ErrNotImplemented)
}

// layerID returns the snapshot id whose layer directory dir is.
func (o *Snapshotter) layerID(dir string) (string, bool) {
	rest, ok := strings.CutPrefix(dir, filepath.Join(o.root, "snapshots")+"/")
	if !ok {
		return "", false
	}
	id, ok := strings.CutSuffix(rest, "/fs")
	if !ok || id == "" || strings.Trim(id, "0123456789") != "" {
		return "", false
	}
	return id, o.upperPath(id) == dir
}

// TakeForApply prepares the active snapshot behind mounts for a layer to
// be written straight into its upper dir, and returns its layers. Only a
// snapshot that nothing has written to yet is taken (nerdctl commit's and
// BuildKit's apply snapshots): its FUSE overlay is ended first, so no
// cached view of the directory goes stale, and the next Mounts mounts it
// again. Anything else is ErrNotImplemented.
func (o *Snapshotter) TakeForApply(ctx context.Context, mounts []mount.Mount) (Layers, error) {
	if len(mounts) != 1 || mounts[0].Type != "bind" {
		return Layers{}, fmt.Errorf("not an overlayfuse mount: %w", errdefs.ErrNotImplemented)
	}
	id, layers, readOnly, ok := o.live.at(mounts[0].Source)
	if !ok || readOnly {
		return Layers{}, fmt.Errorf("mount of %s is not a writable overlayfuse snapshot: %w", mounts[0].Source, errdefs.ErrNotImplemented)
	}
	empty, err := isEmptyDir(layers.Upper)
	if err != nil {
		return Layers{}, err
	}
	if !empty {
		return Layers{}, fmt.Errorf("snapshot %s already has changes: %w", id, errdefs.ErrNotImplemented)
	}
	if err := o.live.unmount(ctx, id); err != nil {
		return Layers{}, fmt.Errorf("end overlay of snapshot %s: %w", id, err)
	}
	return Layers{Upper: layers.Upper, Lower: slices.Clone(layers.Lower), Root: mounts[0].Source}, nil
}

func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err != nil {
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		return false, err
	}
	return false, nil
}
