//go:build linux

package differ

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// Apply unpacks the layer desc straight into the upper dir of the fresh
// snapshot behind mounts, in overlayfs' format, as containerd's applier
// does for an overlay mount: nerdctl commit and BuildKit apply into
// snapshots that would otherwise be written file by file through FUSE.
func (d *Differ) Apply(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount, opts ...diff.ApplyOpt) (ocispec.Descriptor, error) {
	var config diff.ApplyConfig
	for _, o := range opts {
		if err := o(ctx, desc, &config); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("failed to apply config opt: %w", err)
		}
	}
	t0 := time.Now()
	layers, err := d.sn.TakeForApply(ctx, mounts)
	if err != nil {
		return ocispec.Descriptor{}, err
	}

	ra, err := d.store.ReaderAt(ctx, desc)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("failed to get reader from content store: %w", err)
	}
	defer ra.Close()
	var r io.Reader = content.NewReader(ra)
	if config.Progress != nil {
		pr := &progressReader{r: r, p: config.Progress}
		defer func() { pr.p(pr.n) }()
		r = pr
	}

	processors := []diff.StreamProcessor{diff.NewProcessorChain(desc.MediaType, r)}
	processor := processors[0]
	for processor.MediaType() != ocispec.MediaTypeImageLayer {
		if processor, err = diff.GetProcessor(ctx, processor, config.ProcessorPayloads); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("failed to get stream processor for %s: %w", desc.MediaType, err)
		}
		processors = append(processors, processor)
	}
	defer processor.Close()

	digester := digest.Canonical.Digester()
	rc := &countingReader{r: io.TeeReader(processor, digester.Hash())}
	if _, err := archive.Apply(ctx, layers.Upper, rc,
		archive.WithConvertWhiteout(archive.OverlayConvertWhiteout),
		archive.WithParents(layers.Lower)); err != nil {
		return ocispec.Descriptor{}, err
	}
	// Read any trailing data, so the digest covers the whole stream.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return ocispec.Descriptor{}, err
	}
	for _, p := range processors {
		if ep, ok := p.(interface{ Err() error }); ok {
			if err := ep.Err(); err != nil {
				return ocispec.Descriptor{}, err
			}
		}
	}
	if config.SyncFs {
		if err := syncFs(layers.Upper); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	log.G(ctx).WithField("d", time.Since(t0)).WithField("digest", desc.Digest).Debug("diff applied to upper dir")
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Size: rc.n, Digest: digester.Digest()}, nil
}

func syncFs(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// progressReader reports how much of the layer was read before each read.
type progressReader struct {
	r io.Reader
	p func(int64)
	n int64
}

func (pr *progressReader) Read(b []byte) (int, error) {
	pr.p(pr.n)
	n, err := pr.r.Read(b)
	pr.n += int64(n)
	return n, err
}
