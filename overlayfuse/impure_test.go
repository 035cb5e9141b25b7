package overlayfuse

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"golang.org/x/sys/unix"
)

// direntInos lists dir with getdents64: name -> d_ino.
func direntInos(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(fd)
	out := map[string]uint64{}
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		must(t, err)
		if n == 0 {
			return out
		}
		for off := 0; off < n; {
			ino := binary.NativeEndian.Uint64(buf[off:])
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			name := buf[off+19 : off+reclen]
			if i := indexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if s := string(name); s != "." && s != ".." {
				out[s] = ino
			}
			off += reclen
		}
	}
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// TestImpureMarker: copy-ups and renames of entries with an origin mark
// their upper parent trusted.overlay.impure, as the kernel does, so that
// kernel overlayfs mounting our upper shows in readdir the d_ino that
// stat shows as st_ino (xfstests overlay/038).
func TestImpureMarker(t *testing.T) {
	lowers, upper, work := newLayers(t, 1)
	writeFile(t, filepath.Join(lowers[0], "d/a"), "a", 0o644)
	writeFile(t, filepath.Join(lowers[0], "d/b"), "b", 0o644)
	writeFile(t, filepath.Join(lowers[0], "top"), "t", 0o644)
	m := mountLayers(t, lowers, upper, work, Options{})
	must(t, os.Chtimes(m.path("d/a"), time1, time1))   // copy-up in a merged dir
	must(t, os.Mkdir(m.path("new"), 0o755))            // a pure upper dir
	must(t, os.Rename(m.path("d/b"), m.path("new/b"))) // copy-up, rename in
	must(t, os.Rename(m.path("top"), m.path("new/top")))
	m.unmount(t)

	for _, d := range []string{"d", "new"} {
		buf := make([]byte, 8)
		n, err := unix.Lgetxattr(filepath.Join(upper, d), "trusted.overlay.impure", buf)
		n = max(n, 0)
		if err != nil || string(buf[:n]) != "y" {
			t.Errorf("upper %s: %s %q %v, want y", d, "trusted.overlay.impure", buf[:n], err)
		}
	}

	testutil.RequireKernelOverlay(t)
	kdir := filepath.Join(t.TempDir(), "k")
	must(t, os.Mkdir(kdir, 0o755))
	must(t, unix.Mount("overlay", kdir, "overlay", 0, "lowerdir="+lowers[0]+",upperdir="+upper+",workdir="+work))
	t.Cleanup(func() { _ = unix.Unmount(kdir, unix.MNT_DETACH) })
	for _, d := range []string{".", "d", "new"} {
		dir := filepath.Join(kdir, d)
		for name, dino := range direntInos(t, dir) {
			var st unix.Stat_t
			must(t, unix.Lstat(filepath.Join(dir, name), &st))
			if st.Ino != dino {
				t.Errorf("kernel overlayfs on our upper: %s/%s: d_ino %d, st_ino %d", d, name, dino, st.Ino)
			}
		}
	}
}
