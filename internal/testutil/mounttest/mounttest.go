// Package mounttest holds the mount helpers shared by the tests of the
// snapshotter and the daemon. It is apart from testutil so that the
// overlay library's tests do not link containerd.
package mounttest

import (
	"errors"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// MountAt mounts what a snapshotter returned on a new directory, as
// containerd does, and detaches it when the test ends.
func MountAt(t testing.TB, mounts []mount.Mount) string {
	t.Helper()
	target := t.TempDir()
	if err := mount.All(mounts, target); err != nil {
		t.Fatalf("mount %+v: %v", mounts, err)
	}
	t.Cleanup(func() { Detach(t, target) })
	return target
}

// Detach unmounts everything mounted at target (an idmapped mount sits on
// the bind mount it maps); a mount of a dead FUSE server is detached.
func Detach(t testing.TB, target string) {
	t.Helper()
	for {
		err := unix.Unmount(target, unix.MNT_DETACH)
		if err == nil {
			continue
		}
		if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			t.Errorf("unmount %s: %v", target, err)
		}
		return
	}
}

// AssertNoMounts fails the test if anything is still mounted under dir,
// and detaches it.
func AssertNoMounts(t testing.TB, dir string) {
	t.Helper()
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Errorf("mountinfo: %v", err)
		return
	}
	for _, m := range infos {
		t.Errorf("left mounted: %s (%s)", m.Mountpoint, m.FSType)
		_ = unix.Unmount(m.Mountpoint, unix.MNT_DETACH) // the test has failed; best effort
	}
}
