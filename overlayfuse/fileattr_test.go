package overlayfuse

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"golang.org/x/sys/unix"
)

// getFlagsAt and setFlagsAt are lsattr and chattr on a path.
func getFlagsAt(path string) (uint32, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
}

func setFlagsAt(path string, set, clear uint32) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	old, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return err
	}
	return unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(old&^clear|set))
}

// flagsTempDir is a temp dir whose immutable and append-only flags are
// cleared at cleanup, after the mounts on it are gone, so it can go.
func flagsTempDir(t *testing.T) string {
	base := t.TempDir()
	t.Cleanup(func() {
		_ = filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err == nil && (d.Type().IsRegular() || d.IsDir()) {
				_ = setFlagsAt(p, 0, protMask)
			}
			return nil
		})
	})
	return base
}

// buildFlagLayer fills a lower layer with a file per flag and a directory
// per protecting flag.
func buildFlagLayer(t *testing.T, l string) {
	for _, f := range []string{"i", "a", "A", "S", "n", "di/f", "da/f"} {
		writeFile(t, filepath.Join(l, f), "data\n", 0o644)
	}
	for name, fl := range map[string]uint32{"i": fsImmutableFl, "a": fsAppendFl, "A": fsNoatimeFl,
		"S": fsSyncFl, "di": fsImmutableFl, "da": fsAppendFl} {
		must(t, setFlagsAt(filepath.Join(l, name), fl, 0))
	}
}

type flagOp struct {
	name string
	do   func(root string) error
}

func openClose(rel string, flags int, data string) flagOp {
	return flagOp{"open " + rel, func(root string) error {
		fd, err := unix.Open(filepath.Join(root, rel), flags|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if data != "" {
			_, err = unix.Write(fd, []byte(data))
		}
		return err
	}}
}

func pathOp(name string, f func(p func(string) string) error) flagOp {
	return flagOp{name, func(root string) error {
		return f(func(rel string) string { return filepath.Join(root, rel) })
	}}
}

// flagOps are the operations whose answers depend on inode flags, in
// order: some copy up what later ones look at.
var flagOps = []flagOp{
	openClose("a", unix.O_WRONLY|unix.O_APPEND, "x"),
	openClose("a", unix.O_WRONLY, "x"),
	openClose("a", unix.O_WRONLY|unix.O_APPEND|unix.O_TRUNC, ""),
	openClose("a", unix.O_RDWR|unix.O_APPEND, ""),
	openClose("i", unix.O_WRONLY|unix.O_APPEND, "x"),
	openClose("i", unix.O_RDONLY|unix.O_TRUNC, ""),
	openClose("i", unix.O_RDONLY, ""),
	pathOp("truncate a", func(p func(string) string) error { return unix.Truncate(p("a"), 0) }),
	pathOp("truncate i", func(p func(string) string) error { return unix.Truncate(p("i"), 0) }),
	pathOp("chmod a", func(p func(string) string) error { return unix.Chmod(p("a"), 0o600) }),
	pathOp("chmod i", func(p func(string) string) error { return unix.Chmod(p("i"), 0o600) }),
	pathOp("chown a", func(p func(string) string) error { return unix.Lchown(p("a"), 1, 1) }),
	pathOp("chown i", func(p func(string) string) error { return unix.Lchown(p("i"), 1, 1) }),
	pathOp("utimes now a", func(p func(string) string) error { return utimesNow(p("a")) }),
	pathOp("utimes now i", func(p func(string) string) error { return utimesNow(p("i")) }),
	pathOp("utimes a", func(p func(string) string) error {
		return unix.UtimesNano(p("a"), []unix.Timespec{{Sec: 1}, {Sec: 1}})
	}),
	pathOp("setxattr a", func(p func(string) string) error { return unix.Setxattr(p("a"), "user.x", []byte("1"), 0) }),
	pathOp("setxattr i", func(p func(string) string) error { return unix.Setxattr(p("i"), "user.x", []byte("1"), 0) }),
	pathOp("setxattr di", func(p func(string) string) error { return unix.Setxattr(p("di"), "user.x", []byte("1"), 0) }),
	pathOp("removexattr a", func(p func(string) string) error { return unix.Removexattr(p("a"), "user.y") }),
	pathOp("link a", func(p func(string) string) error { return unix.Link(p("a"), p("a2")) }),
	pathOp("link i", func(p func(string) string) error { return unix.Link(p("i"), p("i2")) }),
	pathOp("unlink a", func(p func(string) string) error { return unix.Unlink(p("a")) }),
	pathOp("unlink i", func(p func(string) string) error { return unix.Unlink(p("i")) }),
	pathOp("rename a", func(p func(string) string) error { return unix.Rename(p("a"), p("a3")) }),
	pathOp("rename over i", func(p func(string) string) error { return unix.Rename(p("n"), p("i")) }),
	pathOp("create in di", func(p func(string) string) error { return os.WriteFile(p("di/new"), nil, 0o644) }),
	pathOp("mkdir in di", func(p func(string) string) error { return unix.Mkdir(p("di/x"), 0o755) }),
	pathOp("unlink in di", func(p func(string) string) error { return unix.Unlink(p("di/f")) }),
	pathOp("rename into di", func(p func(string) string) error { return unix.Rename(p("n"), p("di/n")) }),
	openClose("di/f", unix.O_WRONLY|unix.O_APPEND, "y"),
	pathOp("rmdir di", func(p func(string) string) error { return unix.Rmdir(p("di")) }),
	pathOp("rename di", func(p func(string) string) error { return unix.Rename(p("di"), p("dz")) }),
	pathOp("create in da", func(p func(string) string) error { return os.WriteFile(p("da/new"), nil, 0o644) }),
	pathOp("unlink in da", func(p func(string) string) error { return unix.Unlink(p("da/f")) }),
	pathOp("rename in da", func(p func(string) string) error { return unix.Rename(p("da/f"), p("da/g")) }),
	pathOp("rename into da", func(p func(string) string) error { return unix.Rename(p("n"), p("da/n")) }),
	pathOp("rename out of da", func(p func(string) string) error { return unix.Rename(p("da/n"), p("n")) }),
	openClose("A", unix.O_WRONLY|unix.O_APPEND, "x"),
	openClose("S", unix.O_WRONLY|unix.O_APPEND, "x"),
	pathOp("chattr +A i", func(p func(string) string) error { return setFlagsAt(p("i"), fsNoatimeFl, 0) }),
	// Flags set through the mount on upper files.
	openClose("u1", unix.O_WRONLY|unix.O_CREAT, "u"),
	openClose("u2", unix.O_WRONLY|unix.O_CREAT, "u"),
	pathOp("chattr +i u1", func(p func(string) string) error { return setFlagsAt(p("u1"), fsImmutableFl, 0) }),
	pathOp("chattr +a u2", func(p func(string) string) error { return setFlagsAt(p("u2"), fsAppendFl, 0) }),
	openClose("u1", unix.O_WRONLY|unix.O_APPEND, "x"),
	openClose("u2", unix.O_WRONLY, "x"),
	openClose("u2", unix.O_WRONLY|unix.O_APPEND, "x"),
	pathOp("chmod u1", func(p func(string) string) error { return unix.Chmod(p("u1"), 0o600) }),
	pathOp("unlink u1", func(p func(string) string) error { return unix.Unlink(p("u1")) }),
	pathOp("unlink u2", func(p func(string) string) error { return unix.Unlink(p("u2")) }),
	pathOp("chattr +ia u3", func(p func(string) string) error {
		if err := os.WriteFile(p("u3"), nil, 0o644); err != nil {
			return err
		}
		return setFlagsAt(p("u3"), protMask, 0)
	}),
	pathOp("chattr -i u1", func(p func(string) string) error { return setFlagsAt(p("u1"), 0, fsImmutableFl) }),
	pathOp("unlink u1 after -i", func(p func(string) string) error { return unix.Unlink(p("u1")) }),
	pathOp("chattr -a a", func(p func(string) string) error { return setFlagsAt(p("a"), 0, fsAppendFl) }),
	openClose("a", unix.O_WRONLY|unix.O_TRUNC, "z"),
}

func utimesNow(p string) error {
	return unix.UtimesNano(p, []unix.Timespec{{Nsec: unix.UTIME_NOW}, {Nsec: unix.UTIME_NOW}})
}

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var e unix.Errno
	for u := err; u != nil; {
		if x, ok := u.(unix.Errno); ok {
			e = x
			break
		}
		w, ok := u.(interface{ Unwrap() error })
		if !ok {
			return err.Error()
		}
		u = w.Unwrap()
	}
	return unix.ErrnoName(e)
}

// flagSide is one mount over its own copy of the flag layer.
type flagSide struct {
	merged, upper, work string
	lowers              []string
	results             []string
}

func newFlagSide(t *testing.T, kernel bool) *flagSide {
	base := flagsTempDir(t)
	l, u, w, m := filepath.Join(base, "l"), filepath.Join(base, "u"), filepath.Join(base, "w"), filepath.Join(base, "m")
	for _, d := range []string{l, u, w, m} {
		must(t, os.Mkdir(d, 0o755))
	}
	buildFlagLayer(t, l)
	if kernel {
		testutil.RequireKernelOverlay(t)
		must(t, unix.Mount("overlay", m, "overlay", 0, "lowerdir="+l+",upperdir="+u+",workdir="+w))
		t.Cleanup(func() { unmountDir(t, m) })
	} else {
		m = mountLayers(t, []string{l}, u, w, Options{}).dir
	}
	s := &flagSide{merged: m, upper: u, work: w, lowers: []string{l}}
	for _, op := range flagOps {
		s.results = append(s.results, errName(op.do(m)))
	}
	return s
}

func unmountDir(t *testing.T, dir string) {
	if err := unix.Unmount(dir, 0); err != nil && err != unix.EINVAL {
		t.Errorf("unmount %s: %v", dir, err)
		_ = unix.Unmount(dir, unix.MNT_DETACH)
	}
}

// flagState is what lsattr through the mount, and protattr and the real
// flags in the upper dir, show for each name.
func (s *flagSide) flagState(t *testing.T) map[string]string {
	out := map[string]string{}
	for _, name := range []string{"i", "a", "A", "S", "n", "di", "da", "di/f", "da/f", "u2", "u3"} {
		fl, err := getFlagsAt(filepath.Join(s.merged, name))
		st := "merged " + errName(err) + " " + flagLetters(fl)
		fl, err = getFlagsAt(filepath.Join(s.upper, name))
		st += " | upper " + errName(err) + " " + flagLetters(fl)
		v := make([]byte, 16)
		n, err := unix.Lgetxattr(filepath.Join(s.upper, name), protattrXattr, v)
		if err == nil {
			st += " protattr=" + string(v[:n])
		}
		out[name] = st
	}
	return out
}

func flagLetters(fl uint32) string {
	var b strings.Builder
	for _, f := range []struct {
		bit uint32
		c   byte
	}{{fsSyncFl, 'S'}, {fsImmutableFl, 'i'}, {fsAppendFl, 'a'}, {fsNoatimeFl, 'A'}} {
		if fl&f.bit != 0 {
			b.WriteByte(f.c)
		}
	}
	return b.String()
}

// TestInodeFlags runs the operations that immutable, append-only, noatime
// and sync flags govern on kernel overlayfs and on ours, each over its own
// copy of one lower layer, and compares every answer, lsattr through the
// mount, and the flags and protattr in the upper dirs (xfstests
// overlay/078).
func TestInodeFlags(t *testing.T) {
	testutil.RequireFUSE(t)
	kern := newFlagSide(t, true)
	ours := newFlagSide(t, false)
	for i, op := range flagOps {
		if kern.results[i] != ours.results[i] {
			t.Errorf("%s: %s, kernel overlayfs %s", op.name, ours.results[i], kern.results[i])
		}
	}
	ks, os := kern.flagState(t), ours.flagState(t)
	for name, k := range ks {
		if os[name] != k {
			t.Errorf("%s: %s\n   kernel overlayfs: %s", name, os[name], k)
		}
	}
	// Some of the kernel's answers, so that the test means something
	// should the kernel change.
	for i, op := range flagOps {
		if want, ok := flagOpsWant[op.name]; ok && ours.results[i] != want {
			t.Errorf("%s: %s, want %s", op.name, ours.results[i], want)
		}
	}
}

// TestInodeFlagsFromUpper mounts an upper dir that kernel overlayfs left
// with protattr: the flags hold from the first lookup.
func TestInodeFlagsFromUpper(t *testing.T) {
	testutil.RequireFUSE(t)
	kern := newFlagSide(t, true)
	unmountDir(t, kern.merged)
	m := mountLayers(t, kern.lowers, kern.upper, kern.work, Options{})
	for _, c := range []struct {
		op   flagOp
		want string
	}{
		{openClose("u2", unix.O_WRONLY, "x"), "EPERM"},
		{openClose("u2", unix.O_WRONLY|unix.O_APPEND, "x"), "ok"},
		{pathOp("unlink u2", func(p func(string) string) error { return unix.Unlink(p("u2")) }), "EPERM"},
		{pathOp("create in di", func(p func(string) string) error { return os.WriteFile(p("di/new"), nil, 0o644) }), "EPERM"},
		{pathOp("chmod i", func(p func(string) string) error { return unix.Chmod(p("i"), 0o600) }), "EPERM"},
		{pathOp("unlink in da", func(p func(string) string) error { return unix.Unlink(p("da/new")) }), "EPERM"},
	} {
		if got := errName(c.op.do(m.dir)); got != c.want {
			t.Errorf("%s: %s, want %s", c.op.name, got, c.want)
		}
	}
	if fl, err := getFlagsAt(m.path("u3")); err != nil || flagLetters(fl) != "ia" {
		t.Errorf("lsattr u3: %s %v, want ia", flagLetters(fl), err)
	}
}

var flagOpsWant = map[string]string{
	"truncate a": "EPERM", "unlink i": "EPERM", "unlink a": "EPERM", "create in di": "EPERM",
	"unlink in da": "EPERM", "create in da": "ok", "unlink u2": "EPERM", "unlink u1 after -i": "ok",
}
