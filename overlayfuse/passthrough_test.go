package overlayfuse

import (
	"io"
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
// with passthrough the reads go to the lower file, so the page cache holds
// its data once.
func TestPassthroughSharesPageCache(t *testing.T) {
	const size = 128 << 20
	lowers, upper, work := newLayers(t, 1)
	f, err := os.Create(filepath.Join(lowers[0], "big"))
	must(t, err)
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	for i := 0; i < size/len(chunk); i++ {
		_, err := f.Write(chunk)
		must(t, err)
	}
	must(t, f.Close())
	a := mountLayers(t, lowers, upper, work, Options{})
	if !a.srv.PassthroughActive() {
		t.Fatalf("no passthrough on this kernel")
	}
	_, upper2, work2 := newLayers(t, 0)
	b := mountLayers(t, lowers, upper2, work2, Options{})

	unix.Sync()
	must(t, os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0))
	c0 := cachedBytes(t)
	readAll(t, a.path("big"))
	c1 := cachedBytes(t)
	readAll(t, b.path("big"))
	c2 := cachedBytes(t)
	t.Logf("page cache: +%d MiB after mount A, +%d MiB after mount B", (c1-c0)>>20, (c2-c1)>>20)
	if c1-c0 < size/2 {
		t.Fatalf("reading through mount A cached only %d MiB", (c1-c0)>>20)
	}
	if c2-c1 > size/4 {
		t.Errorf("reading the same file through mount B cached %d MiB more", (c2-c1)>>20)
	}
}

func readAll(t *testing.T, p string) {
	f, err := os.Open(p)
	must(t, err)
	defer f.Close()
	if _, err := io.Copy(io.Discard, f); err != nil {
		t.Fatal(err)
	}
}

// cachedBytes is Cached from /proc/meminfo.
func cachedBytes(t *testing.T) int64 {
	return testutil.ProcKiB(t, "/proc/meminfo", "Cached") << 10
}
