//go:build linux

package snapshotter

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"github.com/overlayfuse/overlayfuse/internal/testutil/mounttest"
)

func idMapLabels(base string) snapshots.Opt {
	return snapshots.WithLabels(map[string]string{
		snapshots.LabelSnapshotUIDMapping: "0:" + base + ":65536",
		snapshots.LabelSnapshotGIDMapping: "0:" + base + ":65536",
	})
}

func owner(t *testing.T, path string) [2]uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return [2]uint32{st.Uid, st.Gid}
}

// asHostUID runs fn on a thread whose fs ids are uid:uid, as the root of
// a container mapped there.
func asHostUID(uid int, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its ids
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETFSGID, uintptr(uid), 0, 0); e != 0 {
			done <- e
			return
		}
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETFSUID, uintptr(uid), 0, 0); e != 0 {
			done <- e
			return
		}
		done <- fn()
	}()
	return <-done
}

// TestIDMappedSnapshots mounts what Prepare and View answer with the
// mapping labels through containerd's own mount code, which idmaps the
// bind mount: image files show the mapped ids, the container's new files
// land in the upper dir with them, and two mappings share one image.
func TestIDMappedSnapshots(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t)
	if !s.idmap {
		t.Fatal("the probe found no idmapped FUSE mounts on this kernel (Linux 6.18)")
	}
	commitLayer(ctx, t, s, "base", "", map[string]string{"etc/passwd": "root\n"})
	commitLayer(ctx, t, s, "second", "base", map[string]string{"bin/sh": "sh"})

	for _, base := range []uint32{200000, 300000} {
		key := "c" + strconv.Itoa(int(base))
		m, err := s.Prepare(ctx, key, "second", idMapLabels(strconv.Itoa(int(base))))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(m[0].Options, "uidmap=0:"+strconv.Itoa(int(base))+":65536") || !slices.Contains(m[0].Options, "gidmap=0:"+strconv.Itoa(int(base))+":65536") {
			t.Fatalf("mount %+v: no uidmap/gidmap", m[0])
		}
		again, err := s.Mounts(ctx, key)
		if err != nil || !slices.Equal(again[0].Options, m[0].Options) {
			t.Fatalf("Mounts %+v %v, want %+v", again, err, m)
		}
		target := mounttest.MountAt(t, m)
		// Let the container's root reach it.
		for _, d := range []string{filepath.Dir(target), filepath.Dir(filepath.Dir(target))} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		root := [2]uint32{base, base}
		for _, p := range []string{".", "etc", "etc/passwd", "bin/sh"} {
			if got := owner(t, filepath.Join(target, p)); got != root {
				t.Errorf("%d: %s owned by %v, want %v", base, p, got, root)
			}
		}
		if err := asHostUID(int(base), func() error {
			if err := os.WriteFile(filepath.Join(target, "etc", "new"), []byte("x"), 0o644); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(target, "etc", "passwd"), []byte("toor\n"), 0o644)
		}); err != nil {
			t.Fatalf("%d: write as the container's root: %v", base, err)
		}
		id := filepath.Base(filepath.Dir(m[0].Source))
		for _, p := range []string{".", "etc", "etc/new", "etc/passwd"} {
			if got := owner(t, filepath.Join(s.upperPath(id), p)); got != root {
				t.Errorf("%d: upper %s owned by %v, want %v", base, p, got, root)
			}
		}
		mounttest.Detach(t, target)
	}
	// No layer was chowned: both containers saw their own mapping.
	if got := owner(t, filepath.Join(s.upperPath(snapshotID(ctx, t, s, "base")), "etc", "passwd")); got != [2]uint32{0, 0} {
		t.Errorf("layer file owned by %v, want 0:0", got)
	}

	// A view with a mapping is served by a read-only overlay that
	// containerd can idmap (it skips the idmap of a read-only bind).
	m, err := s.View(ctx, "view", "base", idMapLabels("200000"))
	if err != nil {
		t.Fatal(err)
	}
	target := mounttest.MountAt(t, m)
	if got := owner(t, filepath.Join(target, "etc", "passwd")); got != [2]uint32{200000, 200000} {
		t.Errorf("view: etc/passwd owned by %v, want 200000", got)
	}
	if err := os.WriteFile(filepath.Join(target, "x"), nil, 0o644); err == nil {
		t.Error("write to a view succeeded")
	}
	mounttest.Detach(t, target)
}

func TestIDMapLabelsRefused(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t)
	commitLayer(ctx, t, s, "base", "", map[string]string{"a": "1"})
	for _, labels := range []map[string]string{
		{snapshots.LabelSnapshotUIDMapping: "0:200000:65536"},
		{snapshots.LabelSnapshotGIDMapping: "0:200000:65536"},
		{snapshots.LabelSnapshotUIDMapping: "0:200000", snapshots.LabelSnapshotGIDMapping: "0:200000:65536"},
		{snapshots.LabelSnapshotUIDMapping: "0:200000:0", snapshots.LabelSnapshotGIDMapping: "0:200000:65536"},
	} {
		if _, err := s.Prepare(ctx, "bad", "base", snapshots.WithLabels(labels)); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Prepare with %v: %v, want InvalidArgument", labels, err)
		}
	}
	// Where the kernel cannot idmap FUSE mounts.
	s.idmap = false
	_, err := s.Prepare(ctx, "nokernel", "base", idMapLabels("200000"))
	if !errdefs.IsNotImplemented(err) {
		t.Errorf("Prepare with a mapping the kernel cannot serve: %v, want NotImplemented", err)
	}
	t.Log(err)
	if _, err := s.Stat(ctx, "nokernel"); !errdefs.IsNotFound(err) {
		t.Errorf("refused snapshot left behind: %v", err)
	}
}

// A snapshot with a mapping is mounted with it again by the next process.
func TestIDMappedAfterRestart(t *testing.T) {
	ctx := context.Background()
	testutil.RequireFUSE(t)
	root := t.TempDir()
	s1, err := NewSnapshotter(root)
	if err != nil {
		t.Fatal(err)
	}
	commitLayer(ctx, t, s1, "base", "", map[string]string{"etc/passwd": "root\n"})
	if _, err := s1.Prepare(ctx, "c", "base", idMapLabels("200000")); err != nil {
		t.Fatal(err)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := NewSnapshotter(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s2.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		mounttest.AssertNoMounts(t, root)
	})
	m, err := s2.Mounts(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	target := mounttest.MountAt(t, m)
	for _, d := range []string{filepath.Dir(target), filepath.Dir(filepath.Dir(target))} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if got := owner(t, filepath.Join(target, "etc/passwd")); got != [2]uint32{200000, 200000} {
		t.Errorf("after restart etc/passwd owned by %v, want 200000", got)
	}
	if err := asHostUID(200000, func() error { return os.WriteFile(filepath.Join(target, "new"), nil, 0o644) }); err != nil {
		t.Fatal(err)
	}
	id := filepath.Base(filepath.Dir(m[0].Source))
	if got := owner(t, filepath.Join(s2.upperPath(id), "new")); got != [2]uint32{200000, 200000} {
		t.Errorf("after restart a new file lands owned by %v, want 200000", got)
	}
}
