//go:build linux

package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/internal/testutil/mounttest"
)

// Mounts handed out while a snapshot was active keep showing its tree,
// read-only, after Commit (BuildKit mounts a finished step that way), and
// end with Remove.
func TestCommitKeepsMountsReadOnly(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t)
	commitLayer(ctx, t, s, "base", "", map[string]string{"a": "base"})
	commitLayer(ctx, t, s, "mid", "base", map[string]string{"b": "mid"})
	m, err := s.Prepare(ctx, "step", "mid")
	if err != nil {
		t.Fatal(err)
	}
	rw := mounttest.MountAt(t, m)
	if err := os.WriteFile(filepath.Join(rw, "c"), []byte("step"), 0o644); err != nil {
		t.Fatal(err)
	}
	mounttest.Detach(t, rw)
	if err := s.Commit(ctx, "done", "step"); err != nil {
		t.Fatal(err)
	}

	ro := mounttest.MountAt(t, m) // the mounts Prepare gave, after Commit
	for name, want := range map[string]string{"a": "base", "b": "mid", "c": "step"} {
		if got, err := os.ReadFile(filepath.Join(ro, name)); err != nil || string(got) != want {
			t.Errorf("%s after commit: %q, %v; want %q", name, got, err, want)
		}
	}
	if err := os.WriteFile(filepath.Join(ro, "d"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write after commit: %v, want EROFS", err)
	}
	mounttest.Detach(t, ro)
	if err := s.Remove(ctx, "done"); err != nil {
		t.Fatal(err)
	}
	if isFUSEMount(t, m[0].Source) {
		t.Error("committed snapshot still mounted after Remove")
	}
}
