//go:build linux

package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots/storage"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"github.com/overlayfuse/overlayfuse/internal/testutil/mounttest"
)

// chownWalk is containerd's client remapRootFS walk (client/
// container_opts_unix.go) for the mapping 0 -> base: every name's owner
// is read afresh and must be a container id.
func chownWalk(root string, base uint32) error {
	return filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		if st.Uid >= base || st.Gid >= base {
			return fmt.Errorf("%s: container ID %d cannot be mapped to a host ID", p, st.Uid)
		}
		if err := os.Lchown(p, int(st.Uid+base), int(st.Gid+base)); err != nil {
			return err
		}
		if m := info.Mode(); m&os.ModeSymlink == 0 && m&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0 {
			return os.Chmod(p, m)
		}
		return nil
	})
}

// TestChownCopyWithHardLinks is containerd's fallback for a user namespace
// without remap-ids: a chowned copy of an image with a hard link.
func TestChownCopyWithHardLinks(t *testing.T) {
	testutil.RequireKernelOverlay(t)
	ctx := context.Background()
	s, _ := newTestSnapshotter(t)
	commitHardLinkLayers(ctx, t, s)

	// What the client does: Prepare "<digest>-remap", walk, Commit.
	const base = 200000
	key := "default/7/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef-remap"
	m, err := s.Prepare(ctx, key, "links")
	if err != nil {
		t.Fatal(err)
	}
	if m[0].Type != "overlay" {
		t.Fatalf("chowned copy mounts %+v, want kernel overlay", m)
	}
	if err := mount.WithTempMount(ctx, m, func(root string) error { return chownWalk(root, base) }); err != nil {
		t.Fatalf("chown walk: %v", err)
	}
	if err := s.Commit(ctx, "remapped", key); err != nil {
		t.Fatal(err)
	}

	// The container's snapshot on the copy, which the client labels with
	// the mapping too: served as it is, without an idmap (as on a kernel
	// without idmapped FUSE mounts, where this fallback runs), every name
	// mapped, through the FUSE overlay.
	s.idmap = false
	m, err = s.Prepare(ctx, "container", "remapped", idMapLabels("200000"))
	if err != nil {
		t.Fatal(err)
	}
	if m[0].Type != "bind" || !isFUSEMount(t, m[0].Source) || slices.ContainsFunc(m[0].Options, func(o string) bool { return strings.HasPrefix(o, "uidmap=") }) {
		t.Fatalf("container snapshot %+v: want a bind of its FUSE overlay without an idmap", m)
	}
	target := mounttest.MountAt(t, m)
	for _, p := range []string{".", "d", "d/hard1", "d/hard2"} {
		if got := owner(t, filepath.Join(target, p)); got != [2]uint32{base, base} {
			t.Errorf("%s owned by %v, want %d", p, got, base)
		}
	}
	if b, err := os.ReadFile(filepath.Join(target, "d/hard2")); err != nil || string(b) != "linked" {
		t.Errorf("d/hard2: %q %v", b, err)
	}
	// The image's layers are untouched.
	if got := owner(t, filepath.Join(s.upperPath(snapshotID(ctx, t, s, "base")), "d/hard1")); got != [2]uint32{0, 0} {
		t.Errorf("image layer chowned: %v", got)
	}
}

// TestChownWalkOnFUSEFails shows why the chowned copy is not made through
// the FUSE overlay: it keeps the hard link one file, so the walk meets the
// second name already chowned.
func TestChownWalkOnFUSEFails(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t)
	commitHardLinkLayers(ctx, t, s)
	m, err := s.Prepare(ctx, "plain", "links")
	if err != nil {
		t.Fatal(err)
	}
	target := mounttest.MountAt(t, m)
	if err := chownWalk(target, 200000); err == nil {
		t.Fatal("chown walk through the FUSE overlay succeeded: the hard link was split")
	}
}

func snapshotID(ctx context.Context, t *testing.T, s *Snapshotter, key string) string {
	t.Helper()
	var id string
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		id, _, _, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return id
}

// commitHardLinkLayers commits "base" with d/hard1 and on it "links", which
// adds d/hard2 as a second name of the same file.
func commitHardLinkLayers(ctx context.Context, t *testing.T, s *Snapshotter) {
	t.Helper()
	commitLayer(ctx, t, s, "base", "", map[string]string{"d/hard1": "linked"})
	m, err := s.Prepare(ctx, "links-active", "base")
	if err != nil {
		t.Fatal(err)
	}
	target := mounttest.MountAt(t, m)
	if err := os.Link(filepath.Join(target, "d/hard1"), filepath.Join(target, "d/hard2")); err != nil {
		t.Fatal(err)
	}
	mounttest.Detach(t, target)
	if err := s.Commit(ctx, "links", "links-active"); err != nil {
		t.Fatal(err)
	}
}
