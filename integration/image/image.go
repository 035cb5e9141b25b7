// Package image builds the integration test images locally (no registry is
// reachable) and writes them as OCI image layout tars that both
// `ctr images import` and `nerdctl load` accept.
package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	_ "crypto/sha256" // registers sha256 for go-digest
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Entry is one tar header of a layer, with the data of a regular file.
type Entry struct {
	Name     string // path without a leading slash; directories end in "/"
	Type     byte   // tar.TypeReg, TypeDir, TypeSymlink, TypeLink
	Mode     int64  // permission and setuid/setgid/sticky bits
	UID, GID int
	Data     string
	Linkname string
}

// Layer is one image layer, in tar order.
type Layer []Entry

// Fixed time so that the same input gives the same digests.
var epoch = time.Unix(1700000000, 0)

// Dir, File, Symlink, Hardlink and Whiteout are shorthands for entries.
func Dir(name string, mode int64) Entry {
	return Entry{Name: name + "/", Type: tar.TypeDir, Mode: mode}
}

func File(name, data string, mode int64) Entry {
	return Entry{Name: name, Type: tar.TypeReg, Mode: mode, Data: data}
}

func Symlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeSymlink, Mode: 0o777, Linkname: target}
}

func Hardlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeLink, Mode: 0o644, Linkname: target}
}

// Whiteout deletes dir/name from the layers below (OCI ".wh." file).
func Whiteout(dir, name string) Entry { return File(join(dir, ".wh."+name), "", 0o644) }

// Opaque hides everything below dir in the lower layers (OCI ".wh..wh..opq").
func Opaque(dir string) Entry { return File(join(dir, ".wh..wh..opq"), "", 0o644) }

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func (e Entry) owned(uid, gid int) Entry { e.UID, e.GID = uid, gid; return e }

// tarLayer returns the uncompressed tar of a layer.
func tarLayer(l Layer) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range l {
		h := &tar.Header{
			Typeflag: e.Type, Name: e.Name, Linkname: e.Linkname,
			Mode: e.Mode, Uid: e.UID, Gid: e.GID,
			ModTime: epoch, AccessTime: epoch, ChangeTime: epoch,
			Format: tar.FormatPAX,
		}
		if e.Type == tar.TypeReg {
			h.Size = int64(len(e.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("tar header %s: %w", e.Name, err)
		}
		if e.Type == tar.TypeReg {
			if _, err := io.WriteString(tw, e.Data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type blob struct {
	desc ocispec.Descriptor
	data []byte
}

func jsonBlob(mediaType string, v any) (blob, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return blob{}, err
	}
	return blob{ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}, b}, nil
}

// Write writes an OCI image layout tar holding one image named name
// (e.g. "docker.io/overlayfuse/cases:latest") made of layers, bottom first.
func Write(w io.Writer, name string, layers []Layer, cmd []string) error {
	var blobs []blob
	var diffIDs []digest.Digest
	var layerDescs []ocispec.Descriptor
	for i, l := range layers {
		raw, err := tarLayer(l)
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		var gz bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
		if _, err := zw.Write(raw); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
		d := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(gz.Bytes()), Size: int64(gz.Len())}
		blobs = append(blobs, blob{d, gz.Bytes()})
		layerDescs = append(layerDescs, d)
		diffIDs = append(diffIDs, digest.FromBytes(raw))
	}
	created := epoch.UTC()
	cfg, err := jsonBlob(ocispec.MediaTypeImageConfig, ocispec.Image{
		Created:  &created,
		Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Config: ocispec.ImageConfig{
			Env:        []string{"PATH=/bin"},
			Cmd:        cmd,
			WorkingDir: "/",
		},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
	})
	if err != nil {
		return err
	}
	blobs = append(blobs, cfg)
	man, err := jsonBlob(ocispec.MediaTypeImageManifest, ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    cfg.desc,
		Layers:    layerDescs,
	})
	if err != nil {
		return err
	}
	blobs = append(blobs, man)

	// containerd reads io.containerd.image.name; other tools read the OCI ref.
	tag := "latest"
	for i := len(name) - 1; i >= 0 && name[i] != '/'; i-- {
		if name[i] == ':' {
			tag = name[i+1:]
			break
		}
	}
	md := man.desc
	md.Platform = &ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}
	md.Annotations = map[string]string{
		"io.containerd.image.name":         name,
		ocispec.AnnotationRefName:          tag,
		"org.opencontainers.image.created": created.Format(time.RFC3339),
	}
	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{md},
	})
	if err != nil {
		return err
	}
	layout, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})

	tw := tar.NewWriter(w)
	put := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
	}
	seen := map[digest.Digest]bool{}
	for _, b := range blobs {
		if seen[b.desc.Digest] {
			continue // identical layers share a blob
		}
		seen[b.desc.Digest] = true
		if err := put("blobs/sha256/"+b.desc.Digest.Encoded(), b.data); err != nil {
			return err
		}
	}
	if err := put(ocispec.ImageLayoutFile, layout); err != nil {
		return err
	}
	if err := put(ocispec.ImageIndexFile, index); err != nil {
		return err
	}
	return tw.Close()
}
