package overlayfuse

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
)

// eachMode runs fn on a fresh mount over one lower layer for every
// consistency mode.
func eachMode(t *testing.T, setup func(lower string), fn func(t *testing.T, m *testMount, roSeesWrites bool)) {
	eachModeWith(t, mountLayers, setup, fn)
}

func eachModeWith(t *testing.T, mount func(*testing.T, []string, string, string, Options) *testMount,
	setup func(lower string), fn func(t *testing.T, m *testMount, roSeesWrites bool)) {
	for _, mode := range consistencyModes {
		t.Run(mode.name, func(t *testing.T) {
			lowers, upper, work := newLayers(t, 1)
			setup(lowers[0])
			m := mount(t, lowers, upper, work, mode.opts)
			fn(t, m, mode.roSeesWrites)
		})
	}
}

func TestFileOps(t *testing.T) {
	setup := func(lower string) {
		writeFile(t, filepath.Join(lower, "f"), strings.Repeat("0123456789abcdef", 1024), 0o644)
		writeFile(t, filepath.Join(lower, "g"), "g", 0o644)
		writeFile(t, filepath.Join(lower, "dir/x"), "x", 0o644)
	}
	eachMode(t, setup, func(t *testing.T, m *testMount, _ bool) {
		fd, err := unix.Open(m.path("f"), unix.O_RDWR, 0)
		must(t, err)
		defer unix.Close(fd)

		// pwrite/pread, fsync, fdatasync.
		_, err = unix.Pwrite(fd, []byte("XYZ"), 100)
		must(t, err)
		must(t, unix.Fsync(fd))
		must(t, unix.Fdatasync(fd))
		buf := make([]byte, 3)
		_, err = unix.Pread(fd, buf, 100)
		must(t, err)
		if string(buf) != "XYZ" {
			t.Errorf("pread after pwrite: %q", buf)
		}

		// fallocate: every mode ext4 has.
		must(t, unix.Fallocate(fd, 0, 16384, 8192))
		must(t, unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 4096, 4096))
		must(t, unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE, 0, 16))
		var st unix.Stat_t
		must(t, unix.Fstat(fd, &st))
		if st.Size != 24576 {
			t.Errorf("size after fallocate %d", st.Size)
		}
		// The kernel's FUSE passes only these fallocate modes on; it
		// answers COLLAPSE_RANGE and INSERT_RANGE itself.
		wantErrno(t, unix.Fallocate(fd, unix.FALLOC_FL_COLLAPSE_RANGE, 8192, 4096), unix.EOPNOTSUPP, "collapse range")
		wantErrno(t, unix.Fallocate(fd, unix.FALLOC_FL_INSERT_RANGE, 8192, 4096), unix.EOPNOTSUPP, "insert range")

		// SEEK_DATA/SEEK_HOLE answered from the real file.
		hole, err := unix.Seek(fd, 0, unix.SEEK_HOLE)
		must(t, err)
		if hole != 4096 {
			t.Errorf("SEEK_HOLE = %d, want the punched hole at 4096", hole)
		}
		data, err := unix.Seek(fd, 4096, unix.SEEK_DATA)
		must(t, err)
		if data != 8192 {
			t.Errorf("SEEK_DATA = %d, want 8192 after the hole", data)
		}
		// Of a lower file, without copying it up.
		gfd, err := unix.Open(m.path("g"), unix.O_RDONLY, 0)
		must(t, err)
		if _, err := unix.Seek(gfd, 0, unix.SEEK_HOLE); err != nil {
			t.Errorf("SEEK_HOLE on a lower file: %v", err)
		}
		unix.Close(gfd)
		if _, err := os.Lstat(filepath.Join(m.upper, "g")); err == nil {
			t.Errorf("lseek copied g up")
		}

		// copy_file_range between overlay files.
		out, err := unix.Open(m.path("copy"), unix.O_CREAT|unix.O_RDWR, 0o644)
		must(t, err)
		defer unix.Close(out)
		roff, woff := int64(100), int64(0)
		n, err := unix.CopyFileRange(fd, &roff, out, &woff, 3, 0)
		must(t, err)
		if n != 3 || testutil.ReadFile(t, m.path("copy")) != "XYZ" {
			t.Errorf("copy_file_range: %d %q", n, testutil.ReadFile(t, m.path("copy")))
		}

		// O_APPEND goes to the end.
		afd, err := unix.Open(m.path("g"), unix.O_WRONLY|unix.O_APPEND, 0)
		must(t, err)
		_, err = unix.Write(afd, []byte("+"))
		must(t, err)
		unix.Close(afd)
		if got := testutil.ReadFile(t, m.path("g")); got != "g+" {
			t.Errorf("append: %q", got)
		}

		// O_SYNC, O_DSYNC and O_NOATIME opens work.
		for _, fl := range []int{unix.O_SYNC, unix.O_DSYNC, unix.O_NOATIME} {
			sfd, err := unix.Open(m.path("g"), unix.O_RDWR|fl, 0)
			must(t, err)
			_, err = unix.Pwrite(sfd, []byte("G"), 0)
			must(t, err)
			unix.Close(sfd)
		}

		// Getattr and setattr through the handle.
		must(t, unix.Ftruncate(fd, 10))
		must(t, unix.Fstat(fd, &st))
		if st.Size != 10 {
			t.Errorf("ftruncate: size %d", st.Size)
		}
		must(t, unix.Fchmod(fd, 0o600))
		must(t, unix.Fstat(fd, &st))
		if st.Mode&0o777 != 0o600 {
			t.Errorf("fchmod: %o", st.Mode&0o777)
		}
	})
}

func TestDirectIO(t *testing.T) {
	setup := func(lower string) {
		writeFile(t, filepath.Join(lower, "f"), strings.Repeat("d", 8192), 0o644)
	}
	eachMode(t, setup, func(t *testing.T, m *testMount, _ bool) {
		fd, err := unix.Open(m.path("f"), unix.O_RDWR|unix.O_DIRECT, 0)
		must(t, err)
		defer unix.Close(fd)
		buf := alignedBuf(4096)
		copy(buf, bytes.Repeat([]byte("D"), 4096))
		_, err = unix.Pwrite(fd, buf, 4096)
		must(t, err)
		rd := alignedBuf(4096)
		_, err = unix.Pread(fd, rd, 4096)
		must(t, err)
		if !bytes.Equal(rd, buf) {
			t.Errorf("O_DIRECT read back differs")
		}
		if got := testutil.ReadFile(t, filepath.Join(m.upper, "f")); got[4096] != 'D' || got[0] != 'd' {
			t.Errorf("upper after O_DIRECT write: %q…", got[:8])
		}
	})
}

func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := 4096 - int(uintptr(unsafe.Pointer(&b[0]))%4096)
	return b[off%4096 : off%4096+n]
}

func TestLocks(t *testing.T) {
	setup := func(lower string) { writeFile(t, filepath.Join(lower, "f"), "locked", 0o644) }
	eachMode(t, setup, func(t *testing.T, m *testMount, _ bool) {
		a, err := unix.Open(m.path("f"), unix.O_RDWR, 0)
		must(t, err)
		defer unix.Close(a)
		b, err := unix.Open(m.path("f"), unix.O_RDWR, 0)
		must(t, err)
		defer unix.Close(b)
		must(t, unix.Flock(a, unix.LOCK_EX|unix.LOCK_NB))
		wantErrno(t, unix.Flock(b, unix.LOCK_EX|unix.LOCK_NB), unix.EWOULDBLOCK, "second flock")
		must(t, unix.Flock(a, unix.LOCK_UN))
		must(t, unix.Flock(b, unix.LOCK_EX|unix.LOCK_NB))
		must(t, unix.Flock(b, unix.LOCK_UN))

		// POSIX locks are per process: ask for the conflict with F_OFD.
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 3}
		must(t, unix.FcntlFlock(uintptr(a), unix.F_OFD_SETLK, &lk))
		lk2 := unix.Flock_t{Type: unix.F_WRLCK, Start: 1, Len: 1}
		wantErrno(t, unix.FcntlFlock(uintptr(b), unix.F_OFD_SETLK, &lk2), unix.EAGAIN, "conflicting OFD lock")
		must(t, unix.FcntlFlock(uintptr(b), unix.F_OFD_GETLK, &lk2))
		if lk2.Type != unix.F_WRLCK {
			t.Errorf("F_OFD_GETLK does not see the lock: %+v", lk2)
		}
	})
}

// TestSetflagsCopiesUp: chattr through a read-only fd copies the file up
// and sets the flag on the upper file; the lower file keeps its flags.
func TestSetflagsCopiesUp(t *testing.T) {
	setup := func(lower string) { writeFile(t, filepath.Join(lower, "f"), "x", 0o644) }
	eachMode(t, setup, func(t *testing.T, m *testMount, _ bool) {
		fd, err := unix.Open(m.path("f"), unix.O_RDONLY, 0)
		must(t, err)
		defer unix.Close(fd)
		flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
		must(t, err)
		must(t, unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags|fsNodumpFl)))
		got, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
		must(t, err)
		if got&fsNodumpFl == 0 {
			t.Errorf("nodump not set: %#x", got)
		}
		ufd, err := unix.Open(filepath.Join(m.upper, "f"), unix.O_RDONLY, 0)
		must(t, err)
		defer unix.Close(ufd)
		uf, err := unix.IoctlGetUint32(ufd, unix.FS_IOC_GETFLAGS)
		must(t, err)
		if uf&fsNodumpFl == 0 {
			t.Errorf("upper file flags %#x", uf)
		}
		lfd, err := unix.Open(filepath.Join(m.lowers[0], "f"), unix.O_RDONLY, 0)
		must(t, err)
		defer unix.Close(lfd)
		if lf, _ := unix.IoctlGetUint32(lfd, unix.FS_IOC_GETFLAGS); lf&fsNodumpFl != 0 {
			t.Errorf("the lower file got the flag")
		}
	})
}

// TestMmapConsistency: a MAP_SHARED map of a fd opened read-only before a
// copy-up sees later writes in strict mode (xfstests overlay/061), and a
// writable MAP_SHARED map always maps the upper file.
func TestMmapConsistency(t *testing.T) {
	setup := func(lower string) { writeFile(t, filepath.Join(lower, "f"), strings.Repeat("a", 8192), 0o644) }
	eachModeWith(t, mountServed, setup, func(t *testing.T, m *testMount, roSeesWrites bool) {
		ro, err := unix.Open(m.path("f"), unix.O_RDONLY, 0)
		must(t, err)
		defer unix.Close(ro)
		rmap, err := unix.Mmap(ro, 0, 8192, unix.PROT_READ, unix.MAP_SHARED)
		must(t, err)
		defer unix.Munmap(rmap)
		_ = rmap[0] // fault it in

		rw, err := unix.Open(m.path("f"), unix.O_RDWR, 0)
		must(t, err)
		defer unix.Close(rw)
		wmap, err := unix.Mmap(rw, 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		must(t, err)
		copy(wmap[4096:], "MMAP")
		must(t, unix.Msync(wmap, unix.MS_SYNC))
		must(t, unix.Munmap(wmap))

		if got := testutil.ReadFile(t, filepath.Join(m.upper, "f"))[4096:4100]; got != "MMAP" {
			t.Errorf("upper after a writable map: %q", got)
		}
		if got := testutil.ReadFile(t, filepath.Join(m.lowers[0], "f"))[4096:4100]; got != "aaaa" {
			t.Fatalf("the lower file changed: %q", got)
		}
		if roSeesWrites && string(rmap[4096:4100]) != "MMAP" {
			// Strict mode, and no passthrough: one page cache for the node.
			t.Errorf("read-only map shows %q", rmap[4096:4100])
		}
	})
}

// fsNodumpFl is FS_NODUMP_FL, chattr's d.
const fsNodumpFl = 0x40

// TestWriteDropsPrivileges: a write or truncate by an unprivileged caller
// drops set-id bits, a write by root keeps them, and any write drops file
// capabilities, in every mode (passthrough writes never reach us).
func TestWriteDropsPrivileges(t *testing.T) {
	capV2 := []byte{0, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} // cap_net_raw
	setup := func(lower string) {
		for _, name := range []string{"user", "trunc", "root"} {
			p := filepath.Join(lower, name)
			writeFile(t, p, "data", 0o644)
			must(t, unix.Chmod(p, 0o6777))
		}
		p := filepath.Join(lower, "capped")
		writeFile(t, p, "data", 0o755)
		must(t, unix.Setxattr(p, capabilityXattr, capV2, 0))
	}
	eachMode(t, setup, func(t *testing.T, m *testMount, _ bool) {
		done := make(chan error)
		go func() {
			done <- asUser(1000, 1000, 0o022, func() error {
				f, err := os.OpenFile(m.path("user"), os.O_WRONLY, 0)
				if err != nil {
					return err
				}
				if _, err := f.WriteAt([]byte("x"), 0); err != nil {
					return err
				}
				if err := f.Close(); err != nil {
					return err
				}
				return os.Truncate(m.path("trunc"), 1)
			})
		}()
		must(t, <-done)
		f, err := os.OpenFile(m.path("root"), os.O_WRONLY, 0)
		must(t, err)
		_, err = f.WriteAt([]byte("x"), 0)
		must(t, err)
		must(t, f.Close())
		f, err = os.OpenFile(m.path("capped"), os.O_WRONLY, 0)
		must(t, err)
		_, err = f.WriteAt([]byte("x"), 0)
		must(t, err)
		must(t, f.Close())

		mode := func(p string) uint32 {
			var st unix.Stat_t
			must(t, unix.Stat(m.path(p), &st))
			return st.Mode & 07777
		}
		if got := mode("user"); got != 0o777 {
			t.Errorf("written by uid 1000: mode %o, want 777", got)
		}
		if got := mode("trunc"); got != 0o777 {
			t.Errorf("truncated by uid 1000: mode %o, want 777", got)
		}
		if got := mode("root"); got != 0o6777 {
			t.Errorf("written by root: mode %o, want 6777", got)
		}
		if _, err := unix.Getxattr(m.path("capped"), capabilityXattr, make([]byte, 64)); err != unix.ENODATA {
			t.Errorf("security.capability after a write: %v, want ENODATA", err)
		}
	})
}
