//go:build linux

package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"github.com/overlayfuse/overlayfuse/internal/testutil/mounttest"
)

// crash leaves the root as a killed process does: every FUSE connection is
// dead (mounts answer ENOTCONN but stay attached) and the metadata is
// closed without unmounting anything.
func (o *Snapshotter) crash(t *testing.T) {
	t.Helper()
	o.live.mu.Lock()
	defer o.live.mu.Unlock()
	for id, m := range o.live.servers {
		if err := abortConnection(unix.Minor(m.dev)); err != nil {
			t.Fatalf("abort connection of %s: %v", id, err)
		}
		m.srv.Wait()
	}
	// The dead servers must not be unmounted later: their mountpoints
	// will carry the next process's mounts.
	clear(o.live.servers)
	o.live.closed = true
	o.closeOnce.Do(func() { o.closeErr = errors.Join(o.ms.Close(), o.logWriter.Close()) })
}

func TestRecoverAfterCrash(t *testing.T) {
	ctx := context.Background()
	testutil.RequireFUSE(t)
	root := t.TempDir()
	t.Cleanup(func() { mounttest.AssertNoMounts(t, root) })

	s1, err := NewSnapshotter(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s1.Close() })
	commitLayer(ctx, t, s1, "l1", "", map[string]string{"lower": "L"})
	commitLayer(ctx, t, s1, "l2", "l1", map[string]string{"lower2": "L2"})
	m, err := s1.Prepare(ctx, "active", "l2")
	if err != nil {
		t.Fatal(err)
	}
	target := mounttest.MountAt(t, m)
	if err := os.WriteFile(filepath.Join(target, "upper"), []byte("U"), 0o644); err != nil {
		t.Fatal(err)
	}
	mounttest.Detach(t, target)
	v, err := s1.View(ctx, "view", "l2")
	if err != nil {
		t.Fatal(err)
	}
	activeMerged, viewMerged := m[0].Source, v[0].Source

	s1.crash(t)
	for _, dir := range []string{activeMerged, viewMerged} {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); !errors.Is(err, unix.ENOTCONN) {
			t.Fatalf("after crash, stat %s: %v, want ENOTCONN", dir, err)
		}
	}

	s2, err := NewSnapshotter(root)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Cleanup(func() {
		if err := s2.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	for key, want := range map[string]map[string]string{
		"active": {"lower": "L", "lower2": "L2", "upper": "U"},
		"view":   {"lower": "L", "lower2": "L2"},
	} {
		m, err := s2.Mounts(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if !isFUSEMount(t, m[0].Source) {
			t.Errorf("%s: %s not mounted again", key, m[0].Source)
		}
		target := mounttest.MountAt(t, m)
		for p, data := range want {
			if b, err := os.ReadFile(filepath.Join(target, p)); err != nil || string(b) != data {
				t.Errorf("%s: read %s: %q %v, want %q", key, p, b, err, data)
			}
		}
		mounttest.Detach(t, target)
	}
	// The active snapshot is writable and committable after the restart.
	if err := s2.Commit(ctx, "c", "active"); err != nil {
		t.Fatal(err)
	}
}

// A root whose overlay is served by a live process must not be taken over.
func TestRefuseLiveMountsUnderRoot(t *testing.T) {
	ctx := context.Background()
	s, root := newTestSnapshotter(t)
	commitLayer(ctx, t, s, "base", "", nil)
	if _, err := s.Prepare(ctx, "a", "base"); err != nil {
		t.Fatal(err)
	}
	// The metadata is locked by s, so check the mount scan directly.
	other := &Snapshotter{root: root}
	if err := other.detachStaleMounts(ctx, heldMounts{}); err == nil {
		t.Fatal("a live overlay under the root was not refused")
	}
}
