package overlayfuse

import (
	"bytes"
	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func listNames(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	must(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

func TestCopyUpKeepsMetadata(t *testing.T) {
	lowers, upper, work := newLayers(t, 1)
	p := filepath.Join(lowers[0], "dir/f")
	writeFile(t, p, "data", 0o4755)
	must(t, os.Chown(p, 1000, 2000))
	must(t, unix.Lsetxattr(p, "user.k", []byte("v"), 0))
	must(t, unix.Lsetxattr(p, "trusted.t", []byte("tv"), 0))
	must(t, unix.Lsetxattr(p, "trusted.overlay.x", []byte("private"), 0))
	must(t, unix.Chmod(p, 0o4755)) // last: chown and setxattr drop set-id bits
	must(t, os.Chtimes(p, time1, time1))
	// A sparse file: data, 8 MiB hole, data.
	sp := filepath.Join(lowers[0], "sparse")
	f, err := os.Create(sp)
	must(t, err)
	_, err = f.WriteAt([]byte("head"), 0)
	must(t, err)
	_, err = f.WriteAt([]byte("tail"), 8<<20)
	must(t, err)
	must(t, f.Close())
	m := mountLayers(t, lowers, upper, work, Options{})

	// setxattr copies up.
	must(t, unix.Lsetxattr(m.path("dir/f"), "user.new", []byte("n"), 0))
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(upper, "dir/f"), &st))
	if st.Mode&07777 != 0o4755 || st.Uid != 1000 || st.Gid != 2000 {
		t.Errorf("upper copy: mode %o owner %d:%d", st.Mode&07777, st.Uid, st.Gid)
	}
	if st.Mtim.Sec != time1.Unix() {
		t.Errorf("upper copy mtime %d, want %d", st.Mtim.Sec, time1.Unix())
	}
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(filepath.Join(upper, "dir/f"), "trusted.t", buf)
	if err != nil || string(buf[:n]) != "tv" {
		t.Errorf("trusted.t on upper copy: %q %v", buf[:n], err)
	}
	if _, err := unix.Lgetxattr(filepath.Join(upper, "dir/f"), "trusted.overlay.x", buf); err == nil {
		t.Errorf("private xattr copied up")
	}
	if got := testutil.ReadFile(t, filepath.Join(upper, "dir/f")); got != "data" {
		t.Errorf("upper data %q", got)
	}

	// A write open copies up and keeps the holes.
	f, err = os.OpenFile(m.path("sparse"), os.O_RDWR, 0)
	must(t, err)
	must(t, f.Close())
	must(t, unix.Stat(filepath.Join(upper, "sparse"), &st))
	if st.Size != 8<<20+4 || st.Blocks*512 >= 1<<20 {
		t.Errorf("sparse copy: size %d, %d bytes allocated", st.Size, st.Blocks*512)
	}
	fd, err := unix.Open(m.path("sparse"), unix.O_RDONLY, 0)
	must(t, err)
	defer unix.Close(fd)
	hole, err := unix.Seek(fd, 0, unix.SEEK_HOLE)
	must(t, err)
	if hole >= 8<<20 {
		t.Errorf("SEEK_HOLE through the mount = %d, want the hole after the head", hole)
	}
}

func TestWhiteoutsAndOpaque(t *testing.T) {
	lowers, upper, work := newLayers(t, 2)
	writeFile(t, filepath.Join(lowers[1], "d/a"), "a", 0o644)
	writeFile(t, filepath.Join(lowers[1], "d/sub/b"), "b", 0o644)
	writeFile(t, filepath.Join(lowers[1], "gone"), "g", 0o644)
	writeFile(t, filepath.Join(lowers[1], "op/old"), "o", 0o644)
	writeFile(t, filepath.Join(lowers[0], "op/new"), "n", 0o644)
	must(t, unix.Lsetxattr(filepath.Join(lowers[0], "op"), opaqueXattr, []byte("y"), 0))
	must(t, unix.Mknod(filepath.Join(lowers[0], "gone"), unix.S_IFCHR, 0))
	m := mountLayers(t, lowers, upper, work, Options{})

	if _, err := os.Lstat(m.path("gone")); !os.IsNotExist(err) {
		t.Errorf("lower whiteout does not hide: %v", err)
	}
	if got := listNames(t, m.path("op")); got != "new" {
		t.Errorf("opaque dir lists %q", got)
	}
	if got := listNames(t, m.dir); got != "d,op" {
		t.Errorf("root lists %q", got)
	}
	wantErrno(t, unix.Rmdir(m.path("d")), unix.ENOTEMPTY, "rmdir merged non-empty")
	must(t, os.RemoveAll(m.path("d")))
	if _, err := os.Lstat(m.path("d")); !os.IsNotExist(err) {
		t.Fatalf("d after rm -rf: %v", err)
	}
	if !isWhiteoutPath(t, filepath.Join(upper, "d")) {
		t.Errorf("no whiteout for d")
	}
	// Made again, the directory is opaque: nothing old shows through.
	must(t, os.Mkdir(m.path("d"), 0o755))
	if got := listNames(t, m.path("d")); got != "" {
		t.Errorf("recreated d lists %q", got)
	}
	if v, _ := unix.Lgetxattr(filepath.Join(upper, "d"), opaqueXattr, make([]byte, 4)); v != 1 {
		t.Errorf("recreated d is not opaque")
	}
	// A file made again over its whiteout.
	writeFile(t, m.path("gone"), "back", 0o644)
	if got := testutil.ReadFile(t, m.path("gone")); got != "back" {
		t.Errorf("gone = %q", got)
	}
	wantErrno(t, unix.Unlink(m.path("nothere")), unix.ENOENT, "unlink missing")
	wantErrno(t, unix.Mkdir(m.path("op"), 0o755), unix.EEXIST, "mkdir existing")
	fd, err := unix.Open(m.path("op/new"), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o644)
	if err == nil {
		unix.Close(fd)
	}
	wantErrno(t, err, unix.EEXIST, "O_EXCL on existing")
}

func TestPrivateXattrs(t *testing.T) {
	lowers, upper, work := newLayers(t, 2)
	writeFile(t, filepath.Join(lowers[1], "d/a"), "a", 0o644)
	must(t, os.MkdirAll(filepath.Join(lowers[0], "d"), 0o755))
	must(t, unix.Lsetxattr(filepath.Join(lowers[0], "d"), "trusted.overlay.impure", []byte("y"), 0))
	m := mountLayers(t, lowers, upper, work, Options{})
	buf := make([]byte, 1024)
	n, err := unix.Llistxattr(m.path("d"), buf)
	must(t, err)
	if strings.Contains(string(buf[:n]), "trusted.overlay") {
		t.Errorf("listxattr shows %q", buf[:n])
	}
	if _, err := unix.Lgetxattr(m.path("d"), "trusted.overlay.impure", buf); err == nil {
		t.Errorf("getxattr of a private xattr succeeded")
	}
	if err := unix.Lsetxattr(m.path("d"), opaqueXattr, []byte("y"), 0); err == nil {
		t.Errorf("setxattr trusted.overlay.opaque through the mount succeeded")
	}
	if got := listNames(t, m.path("d")); got != "a" {
		t.Errorf("d lists %q after the forged opaque", got)
	}
}

func TestHardLinksStayLinked(t *testing.T) {
	lowers, upper, work := newLayers(t, 1)
	writeFile(t, filepath.Join(lowers[0], "a/one"), "old", 0o644)
	must(t, os.MkdirAll(filepath.Join(lowers[0], "b"), 0o755))
	must(t, os.Link(filepath.Join(lowers[0], "a/one"), filepath.Join(lowers[0], "b/two")))
	m := mountLayers(t, lowers, upper, work, Options{})

	var st1, st2 unix.Stat_t
	must(t, unix.Stat(m.path("a/one"), &st1))
	must(t, unix.Stat(m.path("b/two"), &st2))
	if st1.Ino != st2.Ino || st1.Nlink != 2 {
		t.Fatalf("lower links: ino %d/%d nlink %d", st1.Ino, st2.Ino, st1.Nlink)
	}
	must(t, os.WriteFile(m.path("a/one"), []byte("new"), 0o644))
	if got := testutil.ReadFile(t, m.path("b/two")); got != "new" {
		t.Errorf("other name reads %q after the write", got)
	}
	must(t, unix.Stat(m.path("b/two"), &st2))
	if st2.Ino != st1.Ino || st2.Nlink != 2 {
		t.Errorf("after copy-up: ino %d (was %d), nlink %d", st2.Ino, st1.Ino, st2.Nlink)
	}
	var u1, u2 unix.Stat_t
	must(t, unix.Stat(filepath.Join(upper, "a/one"), &u1))
	must(t, unix.Stat(filepath.Join(upper, "b/two"), &u2))
	if u1.Ino != u2.Ino {
		t.Errorf("upper names are not one file")
	}
	must(t, os.Remove(m.path("b/two")))
	must(t, unix.Stat(m.path("a/one"), &st1))
	if st1.Nlink != 1 {
		t.Errorf("nlink after unlink of the other name: %d", st1.Nlink)
	}
}

func TestRenameLowerDir(t *testing.T) {
	lowers, upper, work := newLayers(t, 2)
	writeFile(t, filepath.Join(lowers[1], "src/a"), "a", 0o644)
	writeFile(t, filepath.Join(lowers[1], "src/sub/b"), "b", 0o600)
	writeFile(t, filepath.Join(lowers[0], "src/c"), "c", 0o644)
	must(t, os.Symlink("a", filepath.Join(lowers[0], "src/link")))
	writeFile(t, filepath.Join(lowers[1], "dst/old"), "o", 0o644)
	m := mountLayers(t, lowers, upper, work, Options{Debug: os.Getenv("OFDEBUG") != ""})
	// Load part of the tree first, so live nodes must follow.
	if got := testutil.ReadFile(t, m.path("src/sub/b")); got != "b" {
		t.Fatalf("src/sub/b = %q", got)
	}
	must(t, os.Rename(m.path("src"), m.path("moved")))
	if got := listNames(t, m.path("moved")); got != "a,c,link,sub" {
		t.Errorf("moved lists %q", got)
	}
	if got := testutil.ReadFile(t, m.path("moved/sub/b")); got != "b" {
		t.Errorf("moved/sub/b = %q", got)
	}
	if _, err := os.Lstat(m.path("src")); !os.IsNotExist(err) {
		t.Errorf("src still there: %v", err)
	}
	// Onto an empty merged directory with a lower part.
	must(t, os.Remove(m.path("dst/old")))
	must(t, unix.Rename(m.path("moved"), m.path("dst"))) // os.Rename refuses a directory target
	if got := listNames(t, m.path("dst")); got != "a,c,link,sub" {
		t.Errorf("dst lists %q", got)
	}
	wantErrno(t, unix.Renameat2(unix.AT_FDCWD, m.path("dst/a"), unix.AT_FDCWD, m.path("dst/c"), unix.RENAME_NOREPLACE),
		unix.EEXIST, "RENAME_NOREPLACE")
	must(t, unix.Renameat2(unix.AT_FDCWD, m.path("dst/a"), unix.AT_FDCWD, m.path("dst/sub"), unix.RENAME_EXCHANGE))
	if got := testutil.ReadFile(t, m.path("dst/sub")); got != "a" {
		t.Errorf("exchanged dst/sub = %q", got)
	}
	if got := testutil.ReadFile(t, m.path("dst/a/b")); got != "b" {
		t.Errorf("exchanged dst/a/b = %q", got)
	}
}

// A lower layer's symlink under a higher layer's directory of the same name
// must never lead the daemon out of the layers.
func TestSymlinkTrap(t *testing.T) {
	lowers, upper, work := newLayers(t, 2)
	host := t.TempDir()
	writeFile(t, filepath.Join(host, "secret"), "host secret", 0o644)
	must(t, os.Symlink(host, filepath.Join(lowers[1], "x")))
	must(t, os.MkdirAll(filepath.Join(lowers[0], "x"), 0o755))
	must(t, os.Symlink(host, filepath.Join(lowers[0], "y")))
	m := mountLayers(t, lowers, upper, work, Options{})

	if _, err := os.Lstat(m.path("x/secret")); !os.IsNotExist(err) {
		t.Errorf("x/secret reachable: %v", err)
	}
	if got := listNames(t, m.path("x")); got != "" {
		t.Errorf("x lists %q", got)
	}
	// y is a symlink in the merged view: the kernel follows it on the
	// caller's side; nothing the daemon does may touch host.
	writeFile(t, m.path("x/new"), "n", 0o644)
	if _, err := os.Lstat(filepath.Join(host, "new")); err == nil {
		t.Errorf("a file was made on the host")
	}
	if tgt, err := os.Readlink(m.path("y")); err != nil || tgt != host {
		t.Errorf("readlink y = %q %v", tgt, err)
	}
}

func TestOwnershipAndUmask(t *testing.T) {
	lowers, upper, work := newLayers(t, 1)
	must(t, os.Mkdir(filepath.Join(lowers[0], "sg"), 0o777))
	must(t, os.Chown(filepath.Join(lowers[0], "sg"), 0, 3000))
	must(t, unix.Chmod(filepath.Join(lowers[0], "sg"), 0o2777))
	must(t, os.Chmod(upper, 0o777)) // the merged root shows the upper root
	m := mountLayers(t, lowers, upper, work, Options{})

	done := make(chan error)
	go func() {
		// A goroutine on a locked thread takes another identity.
		done <- asUser(1000, 1000, 0o022, func() error {
			if err := os.WriteFile(m.path("mine"), []byte("x"), 0o666); err != nil {
				return err
			}
			if err := os.Mkdir(m.path("sg/sub"), 0o777); err != nil {
				return err
			}
			return os.WriteFile(m.path("sg/f"), []byte("x"), 0o666)
		})
	}()
	must(t, <-done)
	check := func(p string, uid, gid uint32, mode uint32) {
		t.Helper()
		var st unix.Stat_t
		must(t, unix.Lstat(m.path(p), &st))
		if st.Uid != uid || st.Gid != gid || st.Mode&07777 != mode {
			t.Errorf("%s: %d:%d %o, want %d:%d %o", p, st.Uid, st.Gid, st.Mode&07777, uid, gid, mode)
		}
	}
	check("mine", 1000, 1000, 0o644)
	check("sg/sub", 1000, 3000, 0o2755)
	check("sg/f", 1000, 3000, 0o644)
}

// asUser runs fn on a locked OS thread with another fsuid/fsgid and umask.
func asUser(uid, gid, umask int, fn func() error) error {
	lockThread()
	defer unlockThreadDirty()
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETFSGID, uintptr(gid), 0, 0); e != 0 {
		return e
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETFSUID, uintptr(uid), 0, 0); e != 0 {
		return e
	}
	// umask is per process; unshare(CLONE_FS) makes it per thread.
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return err
	}
	unix.Umask(umask)
	return fn()
}

func TestManyLowerLayers(t *testing.T) {
	const n = 200
	lowers, upper, work := newLayers(t, n)
	for i := 0; i < n; i++ {
		// Layer i (0 = top) adds its own file and its version of "shared".
		writeFile(t, filepath.Join(lowers[i], "d", "f"+itoa(i)), itoa(i), 0o644)
		writeFile(t, filepath.Join(lowers[i], "shared"), itoa(i), 0o644)
	}
	must(t, unix.Mknod(filepath.Join(lowers[100], "d", "f"+itoa(150)), unix.S_IFCHR, 0))
	m := mountLayers(t, lowers, upper, work, Options{})
	if got := testutil.ReadFile(t, m.path("shared")); got != itoa(0) {
		t.Errorf("shared = %q, want the top layer's", got)
	}
	ents, err := os.ReadDir(m.path("d"))
	must(t, err)
	if len(ents) != n-1 {
		t.Errorf("d has %d entries, want %d", len(ents), n-1)
	}
	if _, err := os.Stat(m.path("d/f150")); !os.IsNotExist(err) {
		t.Errorf("f150 under a whiteout: %v", err)
	}
	if got := testutil.ReadFile(t, m.path("d/f199")); got != itoa(199) {
		t.Errorf("d/f199 = %q", got)
	}
}

// consistencyModes are the mount options of issue 3's two modes, with
// passthrough on (where the kernel has it) and off.
var consistencyModes = []struct {
	name string
	opts Options
	// roSeesWrites: a fd opened read-only before a copy-up reads the
	// data written after it.
	roSeesWrites bool
}{
	{"default", Options{}, false},
	{"default-nopassthrough", Options{Passthrough: PassthroughOff}, true},
	{"strict", Options{Consistency: ConsistencyStrict}, true},
	{"strict-nopassthrough", Options{Consistency: ConsistencyStrict, Passthrough: PassthroughOff}, true},
}

// TestReadOnlyFdSeesCopyUp is the hazard sequence: open read-only and
// read, then open read-write and write. The lower file never changes;
// new opens see the new data; the old read-only fd does too, except in
// the default mode with passthrough (as the kernel's mmap case).
func TestReadOnlyFdSeesCopyUp(t *testing.T) {
	for _, mode := range consistencyModes {
		t.Run(mode.name, func(t *testing.T) {
			lowers, upper, work := newLayers(t, 1)
			writeFile(t, filepath.Join(lowers[0], "f"), strings.Repeat("a", 8192), 0o644)
			m := mountLayers(t, lowers, upper, work, mode.opts)
			ro, err := os.Open(m.path("f"))
			must(t, err)
			defer ro.Close()
			buf := make([]byte, 4)
			_, err = ro.ReadAt(buf, 4096)
			must(t, err)
			rw, err := os.OpenFile(m.path("f"), os.O_RDWR, 0)
			must(t, err)
			_, err = rw.WriteAt([]byte("bbbb"), 4096)
			must(t, err)
			must(t, rw.Close())
			if got, _ := os.ReadFile(filepath.Join(lowers[0], "f")); !bytes.Equal(got, bytes.Repeat([]byte("a"), 8192)) {
				t.Fatalf("the lower file changed")
			}
			if got := testutil.ReadFile(t, m.path("f"))[4096:4100]; got != "bbbb" {
				t.Errorf("a new open reads %q", got)
			}
			if got := testutil.ReadFile(t, filepath.Join(upper, "f"))[4096:4100]; got != "bbbb" {
				t.Errorf("the upper file holds %q", got)
			}
			_, err = ro.ReadAt(buf, 4096)
			must(t, err)
			if mode.roSeesWrites && string(buf) != "bbbb" {
				t.Errorf("read-only fd reads %q after the write", buf)
			}
		})
	}
}
func TestTmpfile(t *testing.T) {
	lowers, upper, work := newLayers(t, 1)
	writeFile(t, filepath.Join(lowers[0], "d/x"), "x", 0o644)
	m := mountLayers(t, lowers, upper, work, Options{})
	fd, err := unix.Open(m.path("d"), unix.O_TMPFILE|unix.O_RDWR, 0o600)
	must(t, err)
	defer unix.Close(fd)
	_, err = unix.Pwrite(fd, []byte("tmp"), 0)
	must(t, err)
	buf := make([]byte, 3)
	_, err = unix.Pread(fd, buf, 0)
	must(t, err)
	var st unix.Stat_t
	must(t, unix.Fstat(fd, &st))
	if string(buf) != "tmp" || st.Nlink != 0 || st.Size != 3 {
		t.Errorf("O_TMPFILE: %q nlink %d size %d", buf, st.Nlink, st.Size)
	}
	if got := listNames(t, m.path("d")); got != "x" {
		t.Errorf("d lists %q", got)
	}
}

// TestSymlinkXattrs: a symlink's xattrs show through the mount, survive
// its copy-up, and can be set on it.
func TestSymlinkXattrs(t *testing.T) {
	lowers, upper, work := newLayers(t, 1)
	l := filepath.Join(lowers[0], "d/link")
	must(t, os.MkdirAll(filepath.Dir(l), 0o755))
	must(t, os.Symlink("target", l))
	must(t, unix.Lsetxattr(l, "trusted.mark", []byte("lower"), 0))
	m := mountLayers(t, lowers, upper, work, Options{})
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(m.path("d/link"), "trusted.mark", buf)
	if err != nil || string(buf[:n]) != "lower" {
		t.Fatalf("lgetxattr through the mount: %q %v", buf[:n], err)
	}
	n, err = unix.Llistxattr(m.path("d/link"), buf)
	if err != nil || !strings.Contains(string(buf[:n]), "trusted.mark") {
		t.Errorf("llistxattr: %q %v", buf[:n], err)
	}
	must(t, unix.Lchown(m.path("d/link"), 1000, 1000)) // copies up
	n, err = unix.Lgetxattr(filepath.Join(upper, "d/link"), "trusted.mark", buf)
	if err != nil || string(buf[:n]) != "lower" {
		t.Errorf("upper copy's xattr: %q %v", buf[:n], err)
	}
	must(t, unix.Lsetxattr(m.path("d/link"), "trusted.new", []byte("v"), 0))
	if _, err := unix.Lgetxattr(filepath.Join(upper, "d/link"), "trusted.new", buf); err != nil {
		t.Errorf("xattr set through the mount: %v", err)
	}
	if tgt, _ := os.Readlink(m.path("d/link")); tgt != "target" {
		t.Errorf("readlink: %q", tgt)
	}
}

// TestInoStableAcrossCopyUp: a copied-up file keeps its lower inode
// number through the kernel forgetting it, a new mount, and a kernel
// overlayfs mount of the same layers: the copy records its origin as the
// kernel does.
func TestInoStableAcrossCopyUp(t *testing.T) {
	lowers, upper, work := newLayers(t, 1)
	writeFile(t, filepath.Join(lowers[0], "d/f"), "f", 0o644)
	var lst unix.Stat_t
	must(t, unix.Stat(filepath.Join(lowers[0], "d/f"), &lst))

	m := mountLayers(t, lowers, upper, work, Options{})
	must(t, os.Chmod(m.path("d/f"), 0o600)) // copies up
	ino := func(p string) uint64 {
		var st unix.Stat_t
		must(t, unix.Stat(p, &st))
		return st.Ino
	}
	if got := ino(m.path("d/f")); got != lst.Ino {
		t.Errorf("after copy-up: st_ino %d, lower %d", got, lst.Ino)
	}
	m.unmount(t)

	m2 := mountLayers(t, lowers, upper, work, Options{})
	if got := ino(m2.path("d/f")); got != lst.Ino {
		t.Errorf("in a new mount: st_ino %d, lower %d", got, lst.Ino)
	}
	ents, err := os.ReadDir(m2.path("d"))
	must(t, err)
	for _, e := range ents {
		info, _ := e.Info()
		if st, ok := info.Sys().(*syscall.Stat_t); ok && e.Name() == "f" && st.Ino != lst.Ino {
			t.Errorf("readdir+stat: st_ino %d", st.Ino)
		}
	}
	m2.unmount(t)

	testutil.RequireKernelOverlay(t)
	kdir := filepath.Join(t.TempDir(), "k")
	must(t, os.Mkdir(kdir, 0o755))
	must(t, os.RemoveAll(work))
	must(t, os.Mkdir(work, 0o755))
	must(t, unix.Mount("overlay", kdir, "overlay", 0, "lowerdir="+lowers[0]+",upperdir="+upper+",workdir="+work))
	t.Cleanup(func() { _ = unix.Unmount(kdir, unix.MNT_DETACH) })
	if got := ino(filepath.Join(kdir, "d/f")); got != lst.Ino {
		t.Errorf("kernel overlayfs shows st_ino %d, lower %d", got, lst.Ino)
	}
}
