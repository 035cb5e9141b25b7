package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The layout tar is self-consistent: every blob matches its digest, the
// config's diff_ids match the uncompressed layers, and the index names the
// image the way ctr and nerdctl look for it.
func TestWriteLayout(t *testing.T) {
	layers := []Layer{
		{Dir("bin", 0o755), File("bin/x", "x", 0o755)},
		{Whiteout("bin", "x"), Opaque("bin"), Hardlink("bin/y", "bin/x")},
	}
	var buf bytes.Buffer
	if err := Write(&buf, "docker.io/test/img:v1", layers, []string{"/bin/sh"}); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name], _ = io.ReadAll(tr)
	}
	blob := func(d digest.Digest) []byte {
		b, ok := files["blobs/sha256/"+d.Encoded()]
		if !ok {
			t.Fatalf("no blob %s", d)
		}
		if digest.FromBytes(b) != d {
			t.Fatalf("blob %s has digest %s", d, digest.FromBytes(b))
		}
		return b
	}
	var idx ocispec.Index
	if err := json.Unmarshal(files["index.json"], &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, files["index.json"])
	}
	md := idx.Manifests[0]
	if md.Annotations["io.containerd.image.name"] != "docker.io/test/img:v1" || md.Annotations[ocispec.AnnotationRefName] != "v1" {
		t.Errorf("annotations %v", md.Annotations)
	}
	if _, ok := files[ocispec.ImageLayoutFile]; !ok {
		t.Errorf("no oci-layout file")
	}
	var man ocispec.Manifest
	if err := json.Unmarshal(blob(md.Digest), &man); err != nil {
		t.Fatal(err)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(blob(man.Config.Digest), &cfg); err != nil {
		t.Fatal(err)
	}
	if len(man.Layers) != 2 || len(cfg.RootFS.DiffIDs) != 2 {
		t.Fatalf("%d layers, %d diff_ids", len(man.Layers), len(cfg.RootFS.DiffIDs))
	}
	var names []string
	for i, l := range man.Layers {
		zr, err := gzip.NewReader(bytes.NewReader(blob(l.Digest)))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(zr)
		if digest.FromBytes(raw) != cfg.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: diff_id mismatch", i)
		}
		lr := tar.NewReader(bytes.NewReader(raw))
		for {
			h, err := lr.Next()
			if err != nil {
				break
			}
			names = append(names, h.Name)
		}
	}
	want := []string{"bin/", "bin/x", "bin/.wh.x", "bin/.wh..wh..opq", "bin/y"}
	if len(names) != len(want) {
		t.Fatalf("entries %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Errorf("entry %d: %s, want %s", i, names[i], want[i])
		}
	}
}

func TestLargeLayers(t *testing.T) {
	if _, err := Base(); err != nil {
		t.Skip(err) // needs busybox-static
	}
	ls, err := LargeLayers(20000)
	if err != nil {
		t.Fatal(err)
	}
	files := 0
	for _, e := range ls[1] {
		if e.Type == tar.TypeReg {
			files++
		}
	}
	if files != 20000 {
		t.Errorf("%d files, want 20000", files)
	}
}
