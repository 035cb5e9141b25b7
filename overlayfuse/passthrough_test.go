package overlayfuse

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/overlayfuse/overlayfuse/internal/testutil"

	"golang.org/x/sys/unix"
)

func TestPassthroughModes(t *testing.T) {
	lowers, upper, work := newLayers(t, 1)
	writeFile(t, filepath.Join(lowers[0], "f"), "x", 0o644)
	on := mountLayers(t, lowers, upper, work, Options{Passthrough: PassthroughOn})
	if !on.srv.PassthroughActive() {
		t.Errorf("passthrough=on mounted without passthrough")
	}
	lowers2, upper2, work2 := newLayers(t, 1)
	off := mountLayers(t, lowers2, upper2, work2, Options{Passthrough: PassthroughOff})
	if off.srv.PassthroughActive() {
		t.Errorf("passthrough=off mounted with passthrough")
	}
	if _, err := Mount(t.TempDir(), Layers{Lower: lowers}, Options{Passthrough: "maybe"}); err == nil {
		t.Errorf("passthrough=maybe accepted")
	}
}

// TestPassthroughSharesPageCache reads one lower file through two mounts:
// with passthrough every read goes to the lower file, so its data is in
// the page cache once, as the lower file's own pages, and the FUSE files
// of both mounts cache nothing.
//
// It measures the page cache of those files alone (cachestat(2)), chunk by
// chunk right after each read, so other processes' I/O cannot disturb it.
// A concurrent drop_caches can only take pages away: a chunk of the lower
// file found missing right after a read is read again (a bounded number of
// times), while pages found in a FUSE file's own cache fail the test at
// once, as no drop can put them there.
func TestPassthroughSharesPageCache(t *testing.T) {
	const (
		size    = 128 << 20
		chunk   = 1 << 20
		retries = 10
	)
	pages := int64(chunk / os.Getpagesize())
	lowers, upper, work := newLayers(t, 1)
	lowerPath := filepath.Join(lowers[0], "big")
	f, err := os.Create(lowerPath)
	must(t, err)
	data := make([]byte, chunk)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for i := 0; i < size/chunk; i++ {
		_, err := f.Write(data)
		must(t, err)
	}
	must(t, f.Sync())
	must(t, f.Close())
	a := mountLayers(t, lowers, upper, work, Options{})
	if !a.srv.PassthroughActive() {
		t.Fatalf("no passthrough on this kernel")
	}
	_, upper2, work2 := newLayers(t, 0)
	b := mountLayers(t, lowers, upper2, work2, Options{})

	// The lower file, opened on the host: its own page cache.
	lower, err := os.Open(lowerPath)
	must(t, err)
	defer lower.Close()
	// Start with none of it cached, so that the reads below are what
	// bring it in. FADV_DONTNEED skips pages still in another CPU's LRU
	// batch; a cache drop drains those. Should pages stay all the same,
	// the test still shows the reads never fill the FUSE file's cache.
	for try := 0; ; try++ {
		must(t, unix.Fadvise(int(lower.Fd()), 0, 0, unix.FADV_DONTNEED))
		n := cached(t, lower, 0, 0)
		if n == 0 {
			break
		}
		if try == 3 {
			t.Logf("%d pages of the lower file stay cached before the reads", n)
			break
		}
		if try > 0 {
			must(t, os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0))
		}
	}
	fa, err := os.Open(a.path("big"))
	must(t, err)
	defer fa.Close()
	fb, err := os.Open(b.path("big"))
	must(t, err)
	defer fb.Close()

	buf := make([]byte, chunk)
	// read reads chunk i through f, checks the data, then that the FUSE
	// file f cached none of it and that the lower file holds all of it,
	// and reports the number of reads that took.
	read := func(f *os.File, mount string, i int) int {
		off := int64(i) * chunk
		for try := 1; ; try++ {
			n, err := f.ReadAt(buf, off)
			if err != nil || n != chunk {
				t.Fatalf("read of %d bytes at %d through mount %s: %d, %v", chunk, off, mount, n, err)
			}
			if !bytes.Equal(buf, data) {
				t.Fatalf("mount %s: wrong data at %d", mount, off)
			}
			if n := cached(t, f, off, chunk); n != 0 {
				t.Fatalf("reading at %d through mount %s cached %d pages in the FUSE file: not passed through to the lower file", off, mount, n)
			}
			if n := cached(t, lower, off, chunk); n == pages {
				return try
			} else if try == retries {
				t.Fatalf("reading at %d through mount %s: %d of %d pages in the lower file's page cache, %d times in a row", off, mount, n, pages, retries)
			}
		}
	}
	extra := 0
	for i := 0; i < size/chunk; i++ {
		extra += read(fa, "A", i) - 1
	}
	for i := 0; i < size/chunk; i++ {
		extra += read(fb, "B", i) - 1
	}
	t.Logf("%d MiB read through two mounts, cached only in the lower file (%d chunks read again after a cache drop)", size>>20, extra)
}

// cached is the number of pages of [off, off+length) of f in f's own page
// cache.
func cached(t *testing.T, f *os.File, off, length int64) int64 {
	t.Helper()
	n, err := testutil.CachedPages(int(f.Fd()), off, length)
	if err != nil {
		t.Fatalf("cachestat %s: %v", f.Name(), err)
	}
	return n
}
