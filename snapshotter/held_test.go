//go:build linux

package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/internal/testutil/mounttest"
	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// fakeKeeper holds hand-overs in memory.
type fakeKeeper struct {
	mu      sync.Mutex
	held    map[string]overlayfuse.Handover
	dropped []string
}

func (k *fakeKeeper) Keep(key string, h overlayfuse.Handover) error {
	return errors.New("fakeKeeper: Keep not expected")
}

func (k *fakeKeeper) Drop(key string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if h, ok := k.held[key]; ok {
		h.Close()
		delete(k.held, key)
	}
	k.dropped = append(k.dropped, key)
	return nil
}

func (k *fakeKeeper) Held() (map[string]overlayfuse.Handover, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string]overlayfuse.Handover{}
	for key, h := range k.held {
		dev, err := dup(h.Dev)
		if err != nil {
			return nil, err
		}
		state, err := dup(h.State)
		if err != nil {
			return nil, err
		}
		out[key] = overlayfuse.Handover{Dev: dev, State: state}
	}
	return out, nil
}

func dup(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// unservedMount mounts at dir a FUSE connection nobody serves, as a
// killed daemon leaves a mount its keeper holds, and returns the
// connection and the mount's device number (any request to it would
// block: nothing stats it).
func unservedMount(t *testing.T, dir string) (*os.File, uint64) {
	t.Helper()
	dev, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0", dev.Fd())
	if err := unix.Mount("held", dir, "fuse.held", 0, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	m := mountAt(t, dir)
	return dev, unix.Mkdev(uint32(m.Major), uint32(m.Minor))
}

// mountAt is the mount table's entry for dir.
func mountAt(t *testing.T, dir string) *mountinfo.Info {
	t.Helper()
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil || len(infos) != 1 {
		t.Fatalf("mount at %s: %v %v", dir, infos, err)
	}
	return infos[0]
}

func memfd(t *testing.T) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("state", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), "state")
}

func inode(f *os.File) uint64 {
	var st unix.Stat_t
	_ = unix.Fstat(int(f.Fd()), &st)
	return st.Ino
}

// At start, a held mount that is still mounted is taken over (Resume gets
// its hand-over); when that fails it is detached, dropped and mounted
// again. A held mount whose snapshot is gone, or whose connection is not
// the one mounted, is dropped; a dead mount nobody holds is detached.
func TestStartTakesOverHeldMounts(t *testing.T) {
	ctx := context.Background()
	s1, root := newTestSnapshotter(t)
	commitLayer(ctx, t, s1, "l1", "", map[string]string{"lower": "L"})
	ma, err := s1.Prepare(ctx, "a", "l1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s1.Prepare(ctx, "b", "l1"); err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, key := range []string{"a", "b"} {
		ids[key] = snapshotID(ctx, t, s1, key)
	}
	s1.crash(t)

	// a: its dead mount replaced by a held connection nobody serves.
	aMerged := ma[0].Source
	if err := unix.Unmount(aMerged, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	dev, aDev := unservedMount(t, aMerged)
	state := memfd(t)
	aKey := keeperKey(ids["a"], aDev)
	gone, wrongDev := keeperKey("999", 77), keeperKey(ids["b"], 1)
	k := &fakeKeeper{held: map[string]overlayfuse.Handover{
		aKey:     {Dev: dev, State: state},
		gone:     {Dev: memfd(t), State: memfd(t)},
		wrongDev: {Dev: memfd(t), State: memfd(t)},
	}}

	var resumed []string
	fakeResume := func(c *config) error {
		c.resume = func(mp string, layers overlayfuse.Layers, _ overlayfuse.Options, h overlayfuse.Handover) (*overlayfuse.Server, error) {
			if inode(h.State) != inode(state) {
				t.Errorf("Resume of %s got another state file", mp)
			}
			resumed = append(resumed, mp+" "+layers.Upper)
			return nil, errors.New("resume failed")
		}
		return nil
	}
	s2, err := NewSnapshotter(root, WithKeeper(k), fakeResume)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s2.Close() })

	if want := []string{aMerged + " " + s2.upperPath(ids["a"])}; !slices.Equal(resumed, want) {
		t.Errorf("Resume calls %q, want %q", resumed, want)
	}
	slices.Sort(k.dropped)
	want := []string{aKey, gone, wrongDev}
	slices.Sort(want)
	if !slices.Equal(k.dropped, want) {
		t.Errorf("dropped %q, want %q", k.dropped, want)
	}
	if len(k.held) != 0 {
		t.Errorf("still held: %v", k.held)
	}
	// Mounted again, by us (a stat of the unserved mount would block).
	if fs := mountAt(t, aMerged).FSType; fs == "fuse.held" {
		t.Fatal("a: the unserved mount is still there")
	}
	for _, key := range []string{"a", "b"} {
		m, err := s2.Mounts(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		target := mounttest.MountAt(t, m)
		if got := readFile(t, target+"/lower"); got != "L" {
			t.Errorf("%s: lower reads %q", key, got)
		}
		mounttest.Detach(t, target)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
