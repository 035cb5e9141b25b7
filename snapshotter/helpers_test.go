//go:build linux

package snapshotter

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/moby/sys/mountinfo"

	"github.com/overlayfuse/overlayfuse/internal/procsetup"
	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"github.com/overlayfuse/overlayfuse/internal/testutil/mounttest"
)

func TestMain(m *testing.M) {
	// As containerd-overlay-grpc does at start: the mounts need umask 0.
	procsetup.Setup()
	os.Exit(m.Run())
}

// newTestSnapshotter opens a snapshotter on a fresh root and closes it
// (ending every mount) when the test ends, also on failure.
func newTestSnapshotter(t testing.TB, opts ...Opt) (*Snapshotter, string) {
	t.Helper()
	testutil.RequireFUSE(t)
	root := t.TempDir()
	s, err := NewSnapshotter(root, opts...)
	if err != nil {
		t.Fatalf("NewSnapshotter: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		mounttest.AssertNoMounts(t, s.Root())
	})
	return s, s.Root()
}

// isFUSEMount reports whether dir is the mountpoint of a FUSE mount.
func isFUSEMount(t testing.TB, dir string) bool {
	t.Helper()
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil {
		t.Fatalf("mountinfo: %v", err)
	}
	return len(infos) == 1 && strings.HasPrefix(infos[0].FSType, "fuse")
}

// commitLayer prepares a snapshot on parent, writes files through its
// mount, and commits it as name.
func commitLayer(ctx context.Context, t testing.TB, s snapshots.Snapshotter, name, parent string, files map[string]string) {
	t.Helper()
	key := name + "-active"
	m, err := s.Prepare(ctx, key, parent)
	if err != nil {
		t.Fatalf("Prepare %s: %v", key, err)
	}
	target := mounttest.MountAt(t, m)
	for p, data := range files {
		full := filepath.Join(target, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mounttest.Detach(t, target)
	if err := s.Commit(ctx, name, key); err != nil {
		t.Fatalf("Commit %s: %v", name, err)
	}
}
