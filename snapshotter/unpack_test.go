//go:build linux

package snapshotter

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/overlayfuse/overlayfuse/internal/testutil/mounttest"
)

// TestUnpackWithoutFUSE: a snapshot prepared for an unpack is not served by
// FUSE; containerd's applier writes the layer straight into its upper dir,
// in overlayfs' format (whiteouts included), and a child shows the result
// through its overlay.
func TestUnpackWithoutFUSE(t *testing.T) {
	ctx := namespaces.WithNamespace(context.Background(), "testing")
	s, root := newTestSnapshotter(t)
	commitLayer(ctx, t, s, "base", "", map[string]string{"keep": "k", "gone": "g"})

	// The client-side unpacker's key carries no label, only its name.
	if m, err := s.Prepare(ctx, "testing/7/extract-123 sha256:other", "base"); err != nil || m[0].Type != "overlay" {
		t.Fatalf("unlabelled extract- key: %+v %v", m, err)
	}
	key := "unpack-1 sha256:layer2"
	m, err := s.Prepare(ctx, key, "base", snapshots.WithLabels(map[string]string{unpackLabel: "sha256:layer2"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || m[0].Type != "overlay" {
		t.Fatalf("unpack mounts: %+v", m)
	}
	if again, err := s.Mounts(ctx, key); err != nil || again[0].Type != "overlay" {
		t.Fatalf("Mounts of the unpack: %+v %v", again, err)
	}
	infos, _ := filepath.Glob(filepath.Join(root, "snapshots", "*", "merged"))
	for _, dir := range infos {
		if isFUSEMount(t, dir) {
			t.Errorf("%s is a FUSE mount during the unpack", dir)
		}
	}
	if m, err := s.Prepare(ctx, "testing/8/extracted", "base"); err != nil || m[0].Type != "bind" {
		t.Fatalf("a key that only starts like one: %+v %v", m, err)
	}

	// A layer that adds a file and deletes one, as an image tar says it.
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, h := range []*tar.Header{
		{Name: "new", Mode: 0o644, Size: 3, Typeflag: tar.TypeReg},
		{Name: ".wh.gone", Mode: 0o644, Typeflag: tar.TypeReg},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("new"))
		}
	}
	tw.Close()
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(layer.Bytes()), Size: int64(layer.Len())}
	if _, err := apply.NewFileSystemApplier(memProvider(layer.Bytes())).Apply(ctx, desc, m); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if err := s.Commit(ctx, "layer2", key); err != nil {
		t.Fatal(err)
	}

	cm, err := s.Prepare(ctx, "container", "layer2")
	if err != nil {
		t.Fatal(err)
	}
	target := mounttest.MountAt(t, cm)
	if b, err := os.ReadFile(filepath.Join(target, "new")); err != nil || string(b) != "new" {
		t.Errorf("new: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(target, "gone")); !os.IsNotExist(err) {
		t.Errorf("gone is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(target, "keep")); err != nil {
		t.Errorf("keep: %v", err)
	}
	mounttest.Detach(t, target)
}

// memProvider serves one blob from memory.
type memProvider []byte

func (p memProvider) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	return blob{bytes.NewReader(p)}, nil
}

type blob struct{ *bytes.Reader }

func (blob) Close() error { return nil }
