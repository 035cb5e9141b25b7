//go:build linux

package differ

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/containerd/v2/pkg/epoch"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// Compare writes the layer that turns lower into upper to the content
// store, as containerd's walking differ does (media type, compression,
// the uncompressed-digest label), but computes it from the upper dir of
// the top layer: upper must be one of our mounts whose layers are
// lower's plus one.
func (d *Differ) Compare(ctx context.Context, lower, upper []mount.Mount, opts ...diff.Opt) (ocispec.Descriptor, error) {
	l, err := d.sn.LayersOf(lower)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	u, err := d.sn.LayersOf(upper)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	uc, lc := u.Chain(), l.Chain()
	if len(uc) != len(lc)+1 || !slices.Equal(uc[1:], lc) {
		return ocispec.Descriptor{}, fmt.Errorf("upper is not lower plus one layer: %w", errdefs.ErrNotImplemented)
	}

	var config diff.Config
	for _, opt := range opts {
		if err := opt(&config); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	if tm := epoch.FromContext(ctx); tm != nil && config.SourceDateEpoch == nil {
		config.SourceDateEpoch = tm
	}
	compressionType := compression.Uncompressed
	if config.Compressor != nil {
		if config.MediaType == "" {
			return ocispec.Descriptor{}, errors.New("media type must be explicitly specified when using custom compressor")
		}
		compressionType = compression.Unknown
	} else {
		if config.MediaType == "" {
			config.MediaType = ocispec.MediaTypeImageLayerGzip
		}
		switch config.MediaType {
		case ocispec.MediaTypeImageLayer:
		case ocispec.MediaTypeImageLayerGzip:
			compressionType = compression.Gzip
		case ocispec.MediaTypeImageLayerZstd:
			compressionType = compression.Zstd
		default:
			return ocispec.Descriptor{}, fmt.Errorf("unsupported diff media type: %v: %w", config.MediaType, errdefs.ErrNotImplemented)
		}
	}

	t0 := time.Now()
	ctx, err = d.withLease(ctx)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc, err := d.writeLayer(ctx, &config, compressionType, l.Root, uc[0])
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	log.G(ctx).WithField("d", time.Since(t0)).WithField("digest", desc.Digest).Debug("diff created from upper dir")
	return desc, nil
}

// writeLayer writes the changes of layer dir over the merged tree at
// base into the content store.
func (d *Differ) writeLayer(ctx context.Context, config *diff.Config, ct compression.Compression, base, dir string) (_ ocispec.Descriptor, retErr error) {
	newReference := config.Reference == ""
	if newReference {
		config.Reference = uniqueRef()
	}
	cw, err := d.store.Writer(ctx, content.WithRef(config.Reference),
		content.WithDescriptor(ocispec.Descriptor{MediaType: config.MediaType}))
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("failed to open writer: %w", err)
	}
	committed := false
	defer func() {
		if committed {
			return
		}
		cw.Close()
		if newReference {
			if err := d.store.Abort(ctx, config.Reference); err != nil {
				log.G(ctx).WithError(err).WithField("ref", config.Reference).Warn("failed to delete diff upload")
			}
		}
	}()
	if !newReference {
		if err := cw.Truncate(0); err != nil {
			return ocispec.Descriptor{}, err
		}
	}

	if ct == compression.Uncompressed {
		if err := writeDiff(ctx, cw, base, dir, config.SourceDateEpoch); err != nil {
			return ocispec.Descriptor{}, err
		}
	} else {
		var compressed io.WriteCloser
		if config.Compressor != nil {
			compressed, err = config.Compressor(cw, config.MediaType)
		} else {
			compressed, err = compression.CompressStream(cw, ct)
		}
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("failed to get compressed stream: %w", err)
		}
		dgstr := digest.SHA256.Digester()
		err = writeDiff(ctx, io.MultiWriter(compressed, dgstr.Hash()), base, dir, config.SourceDateEpoch)
		if cerr := compressed.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		if config.Labels == nil {
			config.Labels = map[string]string{}
		}
		config.Labels[labels.LabelUncompressed] = dgstr.Digest().String()
	}

	var commitopts []content.Opt
	if config.Labels != nil {
		commitopts = append(commitopts, content.WithLabels(config.Labels))
	}
	dgst := cw.Digest()
	if err := cw.Commit(ctx, 0, dgst, commitopts...); err != nil && !errdefs.IsAlreadyExists(err) {
		return ocispec.Descriptor{}, fmt.Errorf("failed to commit: %w", err)
	}
	committed = true
	info, err := d.store.Info(ctx, dgst)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("failed to get info from content store: %w", err)
	}
	// A blob that existed without the label gets it.
	if _, ok := info.Labels[labels.LabelUncompressed]; !ok {
		if info.Labels == nil {
			info.Labels = map[string]string{}
		}
		info.Labels[labels.LabelUncompressed] = config.Labels[labels.LabelUncompressed]
		if _, err := d.store.Update(ctx, info, "labels."+labels.LabelUncompressed); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("error setting uncompressed label: %w", err)
		}
	}
	return ocispec.Descriptor{MediaType: config.MediaType, Size: info.Size, Digest: info.Digest}, nil
}

// writeDiff writes the tar of the changes of layer dir over the merged
// tree at base ("" for none) to w, reading dir from a thread rooted in it.
func writeDiff(ctx context.Context, w io.Writer, base, dir string, sourceDateEpoch *time.Time) error {
	upper, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer upper.Close()
	var b *os.File
	if base != "" {
		if b, err = os.OpenFile(base, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0); err != nil {
			return err
		}
		defer b.Close()
	}
	var opts []archive.ChangeWriterOpt
	if sourceDateEpoch != nil {
		opts = append(opts, archive.WithModTimeUpperBound(*sourceDateEpoch))
	}
	return inRoot(upper, func() error {
		cw := archive.NewChangeWriter(w, "/", opts...)
		if err := upperChanges(ctx, b, cw.HandleChange); err != nil {
			return fmt.Errorf("failed to create diff tar stream: %w", err)
		}
		return cw.Close()
	})
}

func uniqueRef() string {
	var b [3]byte
	// A failed read only makes the name less unique.
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%d-%s", time.Now().UnixNano(), base64.URLEncoding.EncodeToString(b[:]))
}
