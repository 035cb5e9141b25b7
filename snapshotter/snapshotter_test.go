//go:build linux

package snapshotter

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"github.com/containerd/errdefs"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"github.com/overlayfuse/overlayfuse/internal/testutil/mounttest"
)

// TestSnapshotterSuite runs containerd's conformance suite in process.
// Each case closes its snapshotter, ending every mount, also on failure.
func TestSnapshotterSuite(t *testing.T) {
	testutil.RequireFUSE(t)
	testsuite.SnapshotterSuite(t, "overlayfuse", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		var opts []Opt
		if os.Getenv("OFDEBUG") != "" {
			opts = append(opts, WithFUSEDebug)
		}
		s, err := NewSnapshotter(root, opts...)
		if err != nil {
			return nil, nil, err
		}
		return s, s.Close, nil
	})
}

func TestMountAnswers(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t)
	commitLayer(ctx, t, s, "base", "", map[string]string{"a": "1"})
	commitLayer(ctx, t, s, "second", "base", map[string]string{"b": "2"})

	for _, tc := range []struct {
		name, parent string
		view         bool
		wantSource   string // relative to the snapshot's own directory, or "parent"
		wantRW       string
		fuse         bool
	}{
		{name: "active-noparent", wantSource: "fs", wantRW: "rw"},
		{name: "active-1", parent: "base", wantSource: "merged", wantRW: "rw", fuse: true},
		{name: "active-2", parent: "second", wantSource: "merged", wantRW: "rw", fuse: true},
		{name: "view-noparent", view: true, wantSource: "fs", wantRW: "ro"},
		{name: "view-1", parent: "base", view: true, wantSource: "parent", wantRW: "ro"},
		{name: "view-2", parent: "second", view: true, wantSource: "merged", wantRW: "ro", fuse: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			create := s.Prepare
			if tc.view {
				create = s.View
			}
			m, err := create(ctx, tc.name, tc.parent)
			if err != nil {
				t.Fatal(err)
			}
			again, err := s.Mounts(ctx, tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if len(m) != 1 || len(again) != 1 || m[0].Source != again[0].Source {
				t.Fatalf("Mounts %+v differs from Prepare/View %+v", again, m)
			}
			if m[0].Type != "bind" || len(m[0].Options) != 2 || m[0].Options[0] != "rbind" || m[0].Options[1] != tc.wantRW {
				t.Errorf("mount %+v: want bind with rbind,%s", m[0], tc.wantRW)
			}
			id := filepath.Base(filepath.Dir(m[0].Source))
			if tc.wantSource != "parent" && filepath.Base(m[0].Source) != tc.wantSource {
				t.Errorf("source %s: want .../%s", m[0].Source, tc.wantSource)
			}
			if got := isFUSEMount(t, m[0].Source); got != tc.fuse {
				t.Errorf("%s is a FUSE mount: %v, want %v", m[0].Source, got, tc.fuse)
			}
			target := mounttest.MountAt(t, m)
			if tc.parent != "" {
				if b, err := os.ReadFile(filepath.Join(target, "a")); err != nil || string(b) != "1" {
					t.Errorf("read a: %q %v", b, err)
				}
			}
			err = os.WriteFile(filepath.Join(target, "new"), []byte("x"), 0o644)
			if tc.view && err == nil {
				t.Error("write to a view succeeded")
			} else if !tc.view && err != nil {
				t.Errorf("write: %v", err)
			}
			mounttest.Detach(t, target)
			if err := s.Remove(ctx, tc.name); err != nil {
				t.Fatal(err)
			}
			if tc.wantSource != "parent" {
				if _, err := os.Stat(s.snapshotDir(id)); !os.IsNotExist(err) {
					t.Errorf("snapshot directory left after Remove: %v", err)
				}
			}
		})
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t)
	commitLayer(ctx, t, s, "base", "", nil)
	if _, err := s.Prepare(ctx, "child", "base"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.View(ctx, "view", "base"); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name  string
		err   error
		check func(error) bool
	}{
		{"Prepare existing key", func() error { _, err := s.Prepare(ctx, "child", "base"); return err }(), errdefs.IsAlreadyExists},
		{"Prepare on missing parent", func() error { _, err := s.Prepare(ctx, "x", "nope"); return err }(), errdefs.IsNotFound},
		{"Mounts of committed", func() error { _, err := s.Mounts(ctx, "base"); return err }(), errdefs.IsNotFound},
		{"Mounts of missing", func() error { _, err := s.Mounts(ctx, "nope"); return err }(), errdefs.IsNotFound},
		{"Stat of missing", func() error { _, err := s.Stat(ctx, "nope"); return err }(), errdefs.IsNotFound},
		{"Usage of missing", func() error { _, err := s.Usage(ctx, "nope"); return err }(), errdefs.IsNotFound},
		{"Remove with children", s.Remove(ctx, "base"), errdefs.IsFailedPrecondition},
		{"Remove missing", s.Remove(ctx, "nope"), errdefs.IsNotFound},
		{"Commit a view", s.Commit(ctx, "c", "view"), errdefs.IsFailedPrecondition},
		{"Commit a committed", s.Commit(ctx, "c", "base"), errdefs.IsFailedPrecondition},
		{"Commit missing", s.Commit(ctx, "c", "nope"), errdefs.IsNotFound},
		{"Commit onto existing name", s.Commit(ctx, "base", "child"), errdefs.IsAlreadyExists},
		{"Update parent", func() error {
			_, err := s.Update(ctx, snapshots.Info{Name: "child", Parent: "x"}, "parent")
			return err
		}(), errdefs.IsInvalidArgument},
	} {
		if tc.err == nil || !tc.check(tc.err) {
			t.Errorf("%s: got %v", tc.name, tc.err)
		}
	}

	// The failed commit onto an existing name left the snapshot usable.
	m, err := s.Mounts(ctx, "child")
	if err != nil {
		t.Fatal(err)
	}
	if !isFUSEMount(t, m[0].Source) {
		t.Errorf("child not mounted after a failed Commit")
	}
}

func TestCommitUsageAndLayers(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t)
	commitLayer(ctx, t, s, "l1", "", map[string]string{"f": "one", "dir/g": "g"})
	commitLayer(ctx, t, s, "l2", "l1", map[string]string{"f": "two!"})

	u, err := s.Usage(ctx, "l2")
	if err != nil {
		t.Fatal(err)
	}
	if u.Size < 4 || u.Inodes < 2 {
		t.Errorf("usage of l2: %+v", u)
	}
	m, err := s.View(ctx, "v", "l2")
	if err != nil {
		t.Fatal(err)
	}
	target := mounttest.MountAt(t, m)
	for p, want := range map[string]string{"f": "two!", "dir/g": "g"} {
		if b, err := os.ReadFile(filepath.Join(target, p)); err != nil || string(b) != want {
			t.Errorf("%s: %q %v, want %q", p, b, err, want)
		}
	}

	// Labels survive Update and show in Walk filters.
	if _, err := s.Update(ctx, snapshots.Info{Name: "l2", Labels: map[string]string{"k": "v"}}, "labels.k"); err != nil {
		t.Fatal(err)
	}
	var names []string
	if err := s.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		names = append(names, i.Name)
		return nil
	}, "labels.k==v"); err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 || names[0] != "l2" {
		t.Errorf("Walk labels.k==v: %v", names)
	}
}

func TestAsynchronousRemoveAndCleanup(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, AsynchronousRemove)
	commitLayer(ctx, t, s, "base", "", nil)
	m, err := s.Prepare(ctx, "child", "base")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(m[0].Source)
	if err := s.Remove(ctx, "child"); err != nil {
		t.Fatal(err)
	}
	if isFUSEMount(t, m[0].Source) {
		t.Fatal("overlay still mounted after Remove")
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("directory removed before Cleanup: %v", err)
	}
	if err := s.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("directory left after Cleanup: %v", err)
	}
}

// A bind mount of the overlay left behind would keep the FUSE server alive
// forever; Commit must still end it and commit in bounded time.
func TestCommitWithLeftoverBindMount(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, WithUnmountTimeout(300*time.Millisecond))
	commitLayer(ctx, t, s, "base", "", nil)
	m, err := s.Prepare(ctx, "child", "base")
	if err != nil {
		t.Fatal(err)
	}
	target := mounttest.MountAt(t, m) // not unmounted before Commit
	if err := os.WriteFile(filepath.Join(target, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.Commit(ctx, "c", "child"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Commit took %v", d)
	}
	if _, err := os.ReadFile(filepath.Join(target, "f")); err == nil {
		t.Error("leftover bind mount still serves the committed layer")
	}
	if b, err := os.ReadFile(filepath.Join(s.upperPath(filepath.Base(filepath.Dir(m[0].Source))), "f")); err != nil || string(b) != "x" {
		t.Errorf("committed layer: %q %v", b, err)
	}
}

func TestCloseEndsEveryMount(t *testing.T) {
	ctx := context.Background()
	testutil.RequireFUSE(t)
	root := t.TempDir()
	s, err := NewSnapshotter(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(); mounttest.AssertNoMounts(t, s.Root()) })
	commitLayer(ctx, t, s, "base", "", nil)
	var sources []string
	for _, key := range []string{"a", "b", "c"} {
		m, err := s.Prepare(ctx, key, "base")
		if err != nil {
			t.Fatal(err)
		}
		sources = append(sources, m[0].Source)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, src := range sources {
		if isFUSEMount(t, src) {
			t.Errorf("%s still mounted after Close", src)
		}
	}
	if _, err := s.Prepare(ctx, "d", "base"); err == nil {
		t.Error("Prepare after Close succeeded")
	}
}

// Bad overlay options are rejected by the library's validation, as
// invalid arguments, before anything is made at root.
func TestBadMountOptions(t *testing.T) {
	for _, opt := range []Opt{
		WithPassthrough("yes"),
		WithConsistency("weak"),
	} {
		root := filepath.Join(t.TempDir(), "root")
		_, err := NewSnapshotter(root, opt)
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "want") {
			t.Errorf("NewSnapshotter = %v, want an invalid argument that says what is valid", err)
		}
		if _, err := os.Stat(root); !os.IsNotExist(err) {
			t.Errorf("root made for a rejected option: %v", err)
		}
	}
}
