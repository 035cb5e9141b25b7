//go:build linux

package differ

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/internal/procsetup"
	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"github.com/overlayfuse/overlayfuse/internal/testutil/mounttest"
	"github.com/overlayfuse/overlayfuse/snapshotter"
)

func TestMain(m *testing.M) {
	// As containerd-overlay-grpc does at start: the mounts need umask 0.
	procsetup.Setup()
	os.Exit(m.Run())
}

// capability is a valid VFS_CAP_REVISION_2 security.capability value
// (cap_net_bind_service, permitted and effective).
var capability = []byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// wholeSecond is the mtime of a base file whose content a copy-up keeps:
// the walking differ compares such files byte by byte.
var wholeSecond = time.Unix(1700000000, 0)

type fixture struct {
	ctx   context.Context
	sn    *snapshotter.Snapshotter
	store content.Store
	d     *Differ
}

func newFixture(t *testing.T) *fixture {
	testutil.RequireFUSE(t)
	sn, err := snapshotter.NewSnapshotter(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sn.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		mounttest.AssertNoMounts(t, sn.Root())
	})
	store, err := local.NewLabeledStore(t.TempDir(), &labelStore{m: map[digest.Digest]map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{ctx: context.Background(), sn: sn, store: store, d: New(sn, store)}
}

// labelStore keeps the content store's labels in memory, as containerd's
// metadata store does over its own.
type labelStore struct {
	mu sync.Mutex
	m  map[digest.Digest]map[string]string
}

func (s *labelStore) Get(d digest.Digest) (map[string]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.m[d]), nil
}

func (s *labelStore) Set(d digest.Digest, l map[string]string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[d] = maps.Clone(l)
	return nil
}

func (s *labelStore) Update(d digest.Digest, update map[string]string) (map[string]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.m[d]
	if l == nil {
		l = map[string]string{}
	}
	for k, v := range update {
		if v == "" {
			delete(l, k)
		} else {
			l[k] = v
		}
	}
	s.m[d] = l
	return maps.Clone(l), nil
}

// layer prepares a snapshot on parent, runs write on its mount and
// commits it as name.
func (f *fixture) layer(t *testing.T, name, parent string, write func(root string)) {
	t.Helper()
	m, err := f.sn.Prepare(f.ctx, name+"-active", parent)
	if err != nil {
		t.Fatal(err)
	}
	root := mounttest.MountAt(t, m)
	write(root)
	mounttest.Detach(t, root)
	if err := f.sn.Commit(f.ctx, name, name+"-active"); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, p, data string, mode os.FileMode) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, []byte(data), mode))
	must(t, os.Chmod(p, mode))
}

// baseLayers commits "l1" and "l2" on it: the files the changes below
// overwrite, delete, link and mark.
func (f *fixture) baseLayers(t *testing.T) {
	f.layer(t, "l1", "", func(r string) {
		for _, p := range []string{"keep/file", "over/file", "del/file", "deldir/a", "deldir/sub/b",
			"opq/x", "opq/sub/y", "opq/sub/deep/z", "link/src", "xat/file", "tobedir", "todir/c"} {
			writeFile(t, filepath.Join(r, p), "lower "+p+"\n", 0o644)
		}
		writeFile(t, filepath.Join(r, "suid/bin"), "#!/bin/sh\n", 0o755)
		writeFile(t, filepath.Join(r, "capf/bin"), "#!/bin/sh\n", 0o755)
		must(t, os.Symlink("../keep/file", filepath.Join(r, "keep/sym")))
		must(t, os.Link(filepath.Join(r, "keep/file"), filepath.Join(r, "keep/hard")))
	})
	f.layer(t, "l2", "l1", func(r string) {
		writeFile(t, filepath.Join(r, "same/file"), "same content\n", 0o644)
		must(t, os.Chtimes(filepath.Join(r, "same/file"), wholeSecond, wholeSecond))
		writeFile(t, filepath.Join(r, "over/second"), "second layer\n", 0o600)
		must(t, os.Remove(filepath.Join(r, "deldir/a")))
	})
}

// change makes, through the overlay at r, every kind of change a build
// step makes.
func change(t *testing.T, r string) {
	j := func(p string) string { return filepath.Join(r, p) }
	writeFile(t, j("new/file"), "new\n", 0o644)
	writeFile(t, j("newdir/sub/f"), "new deep\n", 0o640)
	writeFile(t, j("over/file"), "overwritten\n", 0o644)
	must(t, os.Remove(j("del/file")))
	must(t, os.RemoveAll(j("deldir")))
	// A directory of the lower layers removed and made again: opaque.
	must(t, os.RemoveAll(j("opq")))
	writeFile(t, j("opq/new"), "in opaque dir\n", 0o644)
	writeFile(t, j("opq/sub/y"), "same name, new dir\n", 0o644)
	must(t, os.Link(j("link/src"), j("link/dst")))
	must(t, os.Link(j("new/file"), j("new/file2")))
	must(t, unix.Chmod(j("suid/bin"), 0o4755))
	must(t, unix.Setxattr(j("capf/bin"), "security.capability", capability, 0))
	must(t, unix.Setxattr(j("xat/file"), "user.comment", []byte("hello"), 0))
	// Copied up, unchanged: the walking differ finds it the same.
	fd, err := unix.Open(j("same/file"), unix.O_RDWR, 0)
	must(t, err)
	unix.Close(fd)
	must(t, os.Symlink("/new/file", j("new/abs")))
	must(t, unix.Mkfifo(j("new/fifo"), 0o600))
	must(t, os.Remove(j("tobedir")))
	writeFile(t, j("tobedir/f"), "was a file\n", 0o644)
	must(t, os.RemoveAll(j("todir")))
	writeFile(t, j("todir"), "was a dir\n", 0o644)
	must(t, os.Rename(j("keep/hard"), j("keep/moved")))
}

// entry is one tar entry: its header fields and a digest of its data.
type entry struct {
	typ                byte
	link               string
	mode, size         int64
	uid, gid           int
	mtime              time.Time
	devmajor, devminor int64
	pax                string
	data               string
}

func readTar(t *testing.T, r io.Reader) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		must(t, err)
		sum := sha256.New()
		_, err = io.Copy(sum, tr)
		must(t, err)
		var pax []string
		for k, v := range h.PAXRecords {
			pax = append(pax, k+"="+v)
		}
		sort.Strings(pax)
		if _, dup := out[h.Name]; dup {
			t.Errorf("tar has %s twice", h.Name)
		}
		out[h.Name] = entry{
			typ: h.Typeflag, link: h.Linkname, mode: h.Mode, size: h.Size, uid: h.Uid, gid: h.Gid,
			mtime: h.ModTime, devmajor: h.Devmajor, devminor: h.Devminor,
			pax: strings.Join(pax, ";"), data: hex.EncodeToString(sum.Sum(nil)),
		}
	}
}

func (f *fixture) blob(t *testing.T, desc ocispec.Descriptor) []byte {
	t.Helper()
	b, err := content.ReadBlob(f.ctx, f.store, desc)
	must(t, err)
	return b
}

// TestCompareEqualsWalking checks that the layer Compare writes from the
// upper dir is the one containerd's walking differ writes by walking both
// trees through FUSE, entry by entry, headers included.
func TestCompareEqualsWalking(t *testing.T) {
	for _, parents := range []string{"one", "two"} {
		t.Run(parents, func(t *testing.T) {
			f := newFixture(t)
			f.baseLayers(t)
			parent := "l2"
			if parents == "one" {
				parent = "l1"
			}
			upper, err := f.sn.Prepare(f.ctx, "work", parent)
			must(t, err)
			upperRoot := mounttest.MountAt(t, upper)
			if parents == "one" {
				writeFile(t, filepath.Join(upperRoot, "same/file"), "same content\n", 0o644)
			}
			change(t, upperRoot)
			lower, err := f.sn.View(f.ctx, "work-lower", parent)
			must(t, err)
			lowerRoot := mounttest.MountAt(t, lower)

			var walking bytes.Buffer
			must(t, archive.WriteDiff(f.ctx, &walking, lowerRoot, upperRoot))
			desc, err := f.d.Compare(f.ctx, lower, upper, diff.WithMediaType(ocispec.MediaTypeImageLayer))
			must(t, err)

			want := readTar(t, &walking)
			got := readTar(t, bytes.NewReader(f.blob(t, desc)))
			for name, w := range want {
				if g, ok := got[name]; !ok {
					t.Errorf("%s: missing, walking differ has %+v", name, w)
				} else if g != w {
					t.Errorf("%s:\n got %+v\nwant %+v", name, g, w)
				}
			}
			for name, g := range got {
				if _, ok := want[name]; !ok {
					t.Errorf("%s: extra %+v", name, g)
				}
			}
			if len(want) < 20 {
				t.Errorf("walking differ's layer has only %d entries: the changes did not happen", len(want))
			}

			// The default media type is gzip, labelled with the tar's digest.
			gz, err := f.d.Compare(f.ctx, lower, upper)
			must(t, err)
			if gz.MediaType != ocispec.MediaTypeImageLayerGzip {
				t.Errorf("media type %s", gz.MediaType)
			}
			info, err := f.store.Info(f.ctx, gz.Digest)
			must(t, err)
			if info.Labels["containerd.io/uncompressed"] != desc.Digest.String() {
				t.Errorf("uncompressed label %q, want %s", info.Labels["containerd.io/uncompressed"], desc.Digest)
			}
		})
	}
}

// TestApplyEqualsWalking applies one layer with Apply straight into the
// upper dir, and with containerd's applier through the FUSE mount, and
// checks that the two trees are the same.
func TestApplyEqualsWalking(t *testing.T) {
	f := newFixture(t)
	f.baseLayers(t)
	upper, err := f.sn.Prepare(f.ctx, "work", "l2")
	must(t, err)
	change(t, mounttest.MountAt(t, upper))
	lower, err := f.sn.View(f.ctx, "work-lower", "l2")
	must(t, err)
	layer, err := f.d.Compare(f.ctx, lower, upper)
	must(t, err)

	ours, err := f.sn.Prepare(f.ctx, "apply-ours", "l2")
	must(t, err)
	applied, err := f.d.Apply(f.ctx, layer, ours)
	must(t, err)
	theirs, err := f.sn.Prepare(f.ctx, "apply-walking", "l2")
	must(t, err)
	want, err := apply.NewFileSystemApplier(f.store).Apply(f.ctx, layer, theirs)
	must(t, err)
	if applied.Digest != want.Digest || applied.Size != want.Size || applied.MediaType != want.MediaType {
		t.Errorf("Apply answered %+v, containerd's applier %+v", applied, want)
	}

	// Applying again into a snapshot with content is not ours to do.
	if _, err := f.d.Apply(f.ctx, layer, ours); !errdefs.IsNotImplemented(err) {
		t.Errorf("second Apply into the same snapshot: %v, want NotImplemented", err)
	}
	for _, key := range []string{"apply-ours", "apply-walking"} {
		must(t, f.sn.Commit(f.ctx, key+"-c", key))
	}
	a, err := f.sn.View(f.ctx, "view-ours", "apply-ours-c")
	must(t, err)
	b, err := f.sn.View(f.ctx, "view-walking", "apply-walking-c")
	must(t, err)
	gotTree := tree(t, mounttest.MountAt(t, a))
	wantTree := tree(t, mounttest.MountAt(t, b))
	for p, w := range wantTree {
		if g := gotTree[p]; g != w {
			t.Errorf("%s:\n got %q\nwant %q", p, g, w)
		}
	}
	for p, g := range gotTree {
		if _, ok := wantTree[p]; !ok {
			t.Errorf("%s: extra %q", p, g)
		}
	}
	for _, p := range []string{"opq/new", "suid/bin", "new/file2", "todir"} {
		if _, ok := gotTree[p]; !ok {
			t.Errorf("%s missing from the applied tree", p)
		}
	}
	if _, ok := gotTree["deldir"]; ok {
		t.Error("deldir survived the apply")
	}
}

// tree describes every entry below root: type, mode, owner, size, mtime,
// content, link target, xattrs and which entries are one file.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	inodes := map[uint64]string{}
	must(t, filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		st := fi.Sys().(*syscall.Stat_t)
		d := fmt.Sprintf("%v %d:%d", fi.Mode(), st.Uid, st.Gid)
		if !fi.IsDir() {
			d += fmt.Sprintf(" size=%d mtime=%d", fi.Size(), fi.ModTime().UnixNano())
		}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			must(t, err)
			d += fmt.Sprintf(" data=%x", sha256.Sum256(b))
			if st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					d += " link=" + first
				} else {
					inodes[st.Ino] = rel
				}
			}
		case fi.Mode()&os.ModeSymlink != 0:
			l, err := os.Readlink(p)
			must(t, err)
			d += " -> " + l
		}
		for _, x := range []string{"security.capability", "user.comment"} {
			if v, err := getxattr(func(b []byte) (int, error) { return unix.Lgetxattr(p, x, b) }); err == nil && v != nil {
				d += fmt.Sprintf(" %s=%x", x, v)
			}
		}
		out[rel] = d
		return nil
	}))
	return out
}

// TestNotOurs checks that mounts of another snapshotter, and pairs of
// ours that are not one layer apart, are left to the next differ.
func TestNotOurs(t *testing.T) {
	f := newFixture(t)
	f.baseLayers(t)
	other := []mount.Mount{{Type: "bind", Source: t.TempDir(), Options: []string{"rbind", "ro"}}}
	overlay := []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/a:/b"}}}
	upper, err := f.sn.Prepare(f.ctx, "work", "l2")
	must(t, err)
	l1, err := f.sn.View(f.ctx, "v1", "l1")
	must(t, err)
	for name, c := range map[string][2][]mount.Mount{
		"foreign upper": {l1, other},
		"foreign lower": {other, upper},
		"overlay":       {l1, overlay},
		"two layers":    {l1, upper},
		"no lower":      {nil, upper},
	} {
		if _, err := f.d.Compare(f.ctx, c[0], c[1]); !errdefs.IsNotImplemented(err) {
			t.Errorf("Compare %s: %v, want NotImplemented", name, err)
		}
	}
	for name, m := range map[string][]mount.Mount{"foreign": other, "view": l1, "overlay": overlay} {
		if _, err := f.d.Apply(f.ctx, ocispec.Descriptor{}, m); !errdefs.IsNotImplemented(err) {
			t.Errorf("Apply %s: %v, want NotImplemented", name, err)
		}
	}
}
