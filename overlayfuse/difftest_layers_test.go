package overlayfuse_test

// Building lower layers from a Go description. Each side of a differential
// test builds its own copy from the same description, so nothing one side
// does can leak into the other.

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// layerTime is the mtime/atime of everything in a built layer; anything
// the tests did not touch still carries it, so its mtime must agree.
var layerTime = time.Date(2021, 3, 4, 5, 6, 7, 123456789, time.UTC)

// fixedTime is what utimensat steps set.
var fixedTime = time.Date(2022, 6, 7, 8, 9, 10, 987654321, time.UTC)

// layer writes into one lower layer directory. Errors end the test: a
// half-built layer would make every comparison meaningless.
type layer struct {
	t    testing.TB
	root string
}

func (l layer) p(rel string) string { return filepath.Join(l.root, rel) }

func (l layer) must(err error, what, rel string) {
	l.t.Helper()
	if err != nil {
		l.t.Fatalf("building layer %s: %s %s: %v", l.root, what, rel, err)
	}
}

func (l layer) parent(rel string) {
	l.t.Helper()
	l.must(os.MkdirAll(filepath.Dir(l.p(rel)), 0o755), "mkdir -p", filepath.Dir(rel))
}

func (l layer) file(rel, data string, perm uint32) layer {
	l.t.Helper()
	l.parent(rel)
	l.must(os.WriteFile(l.p(rel), []byte(data), 0o600), "write", rel)
	l.must(unix.Chmod(l.p(rel), perm), "chmod", rel)
	return l
}

func (l layer) dir(rel string, perm uint32) layer {
	l.t.Helper()
	l.parent(rel)
	if err := unix.Mkdir(l.p(rel), perm); err != nil && err != unix.EEXIST {
		l.must(err, "mkdir", rel)
	}
	l.must(unix.Chmod(l.p(rel), perm), "chmod", rel)
	return l
}

func (l layer) symlink(rel, target string) layer {
	l.t.Helper()
	l.parent(rel)
	l.must(unix.Symlink(target, l.p(rel)), "symlink", rel)
	return l
}

func (l layer) link(old, rel string) layer {
	l.t.Helper()
	l.parent(rel)
	l.must(unix.Link(l.p(old), l.p(rel)), "link", rel)
	return l
}

func (l layer) mknod(rel string, mode uint32, major, minor uint32) layer {
	l.t.Helper()
	l.parent(rel)
	l.must(unix.Mknod(l.p(rel), mode, int(unix.Mkdev(major, minor))), "mknod", rel)
	l.must(unix.Chmod(l.p(rel), mode&07777), "chmod", rel)
	return l
}

// whiteout deletes rel of the layers below, in overlayfs' format.
func (l layer) whiteout(rel string) layer {
	l.t.Helper()
	return l.mknod(rel, unix.S_IFCHR, 0, 0)
}

// opaque makes directory rel hide everything below it.
func (l layer) opaque(rel string) layer {
	l.t.Helper()
	return l.xattr(rel, xattrOpaque, "y")
}

func (l layer) chown(rel string, uid, gid int) layer {
	l.t.Helper()
	l.must(unix.Lchown(l.p(rel), uid, gid), "chown", rel)
	return l
}

func (l layer) xattr(rel, k, v string) layer {
	l.t.Helper()
	l.must(unix.Lsetxattr(l.p(rel), k, []byte(v), 0), "setxattr "+k, rel)
	return l
}

// sparse writes a 4 MiB file with data only at 1 MiB and 3 MiB.
func (l layer) sparse(rel string) layer {
	l.t.Helper()
	l.parent(rel)
	f, err := os.OpenFile(l.p(rel), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	l.must(err, "create", rel)
	defer f.Close()
	blk := make([]byte, 4096)
	for i := range blk {
		blk[i] = byte('a' + i%26)
	}
	for _, off := range []int64{1 << 20, 3 << 20} {
		_, err := f.WriteAt(blk, off)
		l.must(err, "write", rel)
	}
	l.must(f.Truncate(4<<20), "truncate", rel)
	return l
}

// layerSet builds the lower layers of one side. Layer 0 is the topmost.
type layerSet struct {
	t      testing.TB
	root   string
	canary string // a host directory that no operation may change
	n      int
}

func (s *layerSet) layer(i int) layer {
	s.t.Helper()
	if i >= s.n {
		s.n = i + 1
	}
	d := filepath.Join(s.root, fmt.Sprintf("L%03d", i))
	if err := os.MkdirAll(d, 0o755); err != nil {
		s.t.Fatal(err)
	}
	return layer{s.t, d}
}

// lowers returns the layer directories topmost first, after giving every
// file the same times, so both sides start identical.
func (s *layerSet) lowers() []string {
	s.t.Helper()
	var out []string
	for i := 0; i < s.n; i++ {
		d := filepath.Join(s.root, fmt.Sprintf("L%03d", i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			s.t.Fatal(err)
		}
		if err := setTimes(d, layerTime); err != nil {
			s.t.Fatalf("setting times in %s: %v", d, err)
		}
		out = append(out, d)
	}
	return out
}

// setTimes sets atime and mtime of everything under dir, children before
// their directory.
func setTimes(dir string, t time.Time) error {
	var paths []string
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		paths = append(paths, p)
		return err
	})
	if err != nil {
		return err
	}
	sort.Sort(sort.Reverse(sort.StringSlice(paths)))
	ts := unix.NsecToTimespec(t.UnixNano())
	for _, p := range paths {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

// buildStdLayers is the three-layer image most scenarios run on.
//
//	L0 (top)    merged/top, x/ (a dir over L2's x -> /etc), a/newtop
//	L1 (middle) whiteouts of gone-file and gone-dir, opq/ opaque, f2d/ (a
//	            dir over a file), d2f (a file over a dir), a/f2 overridden,
//	            merged/middle, w/ (a dir over L2's w -> canary)
//	L2 (bottom) the bulk: modes, owners, xattrs, links, specials
func buildStdLayers(s *layerSet) {
	top, mid, bot := s.layer(0), s.layer(1), s.layer(2)

	bot.file("a/f1", "a-f1\n", 0o644).file("a/f2", "a-f2\n", 0o644).file("a/sub/deep", "deep\n", 0o644)
	bot.file("file0600", "secret\n", 0o600)
	bot.file("setuid", "#!/bin/sh\n", 0o4755)
	bot.file("owned", "owned\n", 0o644).chown("owned", 1000, 2000).
		xattr("owned", "user.foo", "bar").xattr("owned", "trusted.bar", "baz")
	bot.file("xattrs", "with xattrs\n", 0o640).xattr("xattrs", "user.foo", "foo-value").
		xattr("xattrs", "user.other", "o").xattr("xattrs", "trusted.bar", "t")
	bot.dir("dirx", 0o750).file("dirx/inner", "inner\n", 0o644).chown("dirx", 1000, 2000).
		xattr("dirx", "user.foo", "dir-foo").xattr("dirx", "trusted.bar", "dir-bar")
	bot.dir("sgid", 0o2775).chown("sgid", 0, 2000).file("sgid/old", "old\n", 0o644)
	bot.symlink("link-rel", "a/f1").symlink("link-abs", "/etc/hostname").symlink("dangling", "no/such/target").
		xattr("link-rel", "trusted.sym", "on-a-symlink")
	bot.file("hl1", "hardlinked\n", 0o644).link("hl1", "hl2")
	bot.file("single", "single\n", 0o644)
	bot.mknod("fifo", unix.S_IFIFO|0o644, 0, 0)
	bot.mknod("chardev", unix.S_IFCHR|0o666, 1, 3)
	bot.mknod("blkdev", unix.S_IFBLK|0o600, 7, 0)
	bot.mknod("sock", unix.S_IFSOCK|0o755, 0, 0)
	bot.file("gone-file", "should be hidden\n", 0o644)
	bot.file("gone-dir/x", "should be hidden\n", 0o644)
	bot.file("opq/old1", "hidden by opaque\n", 0o644).file("opq/old2", "hidden by opaque\n", 0o644)
	bot.file("f2d", "file below a dir\n", 0o644)
	bot.file("d2f/child", "below a file\n", 0o644)
	bot.file("merged/bottom", "bottom\n", 0o644).file("merged/sub/b", "b\n", 0o644)
	bot.file("rmtree/a/b/c", "c\n", 0o644).file("rmtree/a/b/d", "d\n", 0o600).file("rmtree/top", "t\n", 0o644)
	bot.file("ren/src", "src\n", 0o644).file("ren/dst", "dst\n", 0o600).file("ren/x", "x\n", 0o644).file("ren/y", "y\n", 0o644)
	bot.file("lowerdir/child", "child\n", 0o644).file("lowerdir/sub/grandchild", "gc\n", 0o640)
	bot.dir("emptydir", 0o755)
	bot.file("empty", "", 0o644)
	bot.symlink("x", "/etc")
	bot.symlink("w", s.canary)
	bot.symlink("y", "/etc")
	bot.symlink("yc", s.canary)

	// Odd names and attributes.
	bot.file(".wh.notawhiteout", "an ordinary file in overlayfs\n", 0o644)
	bot.file(longName, "long name\n", 0o644)
	bot.file("sp ace\ttab", "odd name\n", 0o644).file("ünïcødé", "utf-8\n", 0o644)
	bot.file("mode0000", "no permissions\n", 0).dir("dir0500", 0o755).file("dir0500/f", "in 0500\n", 0o644).dir("dir0500", 0o500)
	bot.dir("sticky", 0o1777)
	bot.symlink("longlink", strings.Repeat("long/", 200)+"end")
	bot.file("bigxattr", "big xattr\n", 0o644).xattr("bigxattr", "user.big", strings.Repeat("b", 3000))
	bot.file("acl", "acl\n", 0o644).xattr("acl", "system.posix_acl_access",
		posixACL([4]uint32{aclUserObj, 6}, [4]uint32{aclUser, 4, 1000}, [4]uint32{aclGroupObj, 4}, [4]uint32{aclMask, 4}, [4]uint32{aclOther, 4}))
	dacl := posixACL([4]uint32{aclUserObj, 7}, [4]uint32{aclUser, 5, 1000}, [4]uint32{aclGroupObj, 5}, [4]uint32{aclMask, 5}, [4]uint32{aclOther, 5})
	bot.dir("acldir", 0o755).xattr("acldir", "system.posix_acl_access", dacl).xattr("acldir", "system.posix_acl_default", dacl)

	mid.whiteout("gone-file").whiteout("gone-dir")
	mid.file("opq/new", "above opaque\n", 0o644).opaque("opq")
	mid.file("f2d/child", "dir over a file\n", 0o644)
	mid.file("d2f", "file over a dir\n", 0o644)
	mid.file("a/f2", "a-f2 from the middle\n", 0o600)
	mid.file("merged/middle", "middle\n", 0o644)
	mid.file("rmtree/a/m", "m\n", 0o644)
	mid.file("w/own", "w own\n", 0o644)

	top.file("merged/top", "top\n", 0o644).file("merged/sub/t", "t\n", 0o644)
	top.file("x/own", "x own\n", 0o644)
	top.file("a/newtop", "newtop\n", 0o644)
}

// longName is the longest name a Linux filesystem takes.
var longName = strings.Repeat("n", 255)

// POSIX ACL xattr tags (linux/posix_acl_xattr.h).
const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclMask     = 0x10
	aclOther    = 0x20
	aclUndefID  = 0xffffffff
)

// posixACL encodes entries {tag, perm, id} as the system.posix_acl_*
// xattr value; id 0 of an entry without a qualifier becomes undefined.
func posixACL(entries ...[4]uint32) string {
	b := []byte{2, 0, 0, 0}
	for _, e := range entries {
		id := e[2]
		if e[0] != aclUser {
			id = aclUndefID
		}
		b = append(b, byte(e[0]), byte(e[0]>>8), byte(e[1]), byte(e[1]>>8), byte(id), byte(id>>8), byte(id>>16), byte(id>>24))
	}
	return string(b)
}

// buildStdWithSparse adds two 4 MiB sparse files (only the copyup scenario
// has it: every snapshot reads every file).
func buildStdWithSparse(s *layerSet) {
	buildStdLayers(s)
	s.layer(2).sparse("sparse").sparse("sparse2")
}

// fileCaps encodes a security.capability xattr (VFS_CAP_REVISION_2,
// effective) granting capability number c.
func fileCaps(c uint) string {
	v := []uint32{0x02000001, 1 << c, 0, 0, 0}
	b := make([]byte, 0, 20)
	for _, x := range v {
		b = append(b, byte(x), byte(x>>8), byte(x>>16), byte(x>>24))
	}
	return string(b)
}

// buildStdWithBigDir adds big/: a directory big enough that getdents needs
// several calls, merged from two layers, with names overridden and
// whited out.
func buildStdWithBigDir(s *layerSet) {
	buildStdLayers(s)
	top, mid, bot := s.layer(0), s.layer(1), s.layer(2)
	for i := 0; i < 150; i++ {
		bot.file(fmt.Sprintf("big/entry-with-a-rather-long-name-%03d", i), "bottom\n", 0o644)
		mid.file(fmt.Sprintf("big/entry-with-a-rather-long-name-%03d", i+75), "middle\n", 0o644)
		if i%7 == 0 {
			top.whiteout(fmt.Sprintf("big/entry-with-a-rather-long-name-%03d", i*2))
		}
	}
}

// buildStdForUsers adds files for unprivileged callers: a world-writable
// setuid file, a directory owned by uid 1000, a sticky directory with
// files of two owners, and many files in one lower-only directory.
func buildStdForUsers(s *layerSet) {
	buildStdLayers(s)
	bot := s.layer(2)
	bot.file("suidw", "setuid, world-writable\n", 0o4777)
	bot.file("sgidw", "setgid, world-writable\n", 0o2777)
	bot.dir("ownerdir", 0o755).chown("ownerdir", 1000, 2000)
	bot.file("ownerdir/f", "user file\n", 0o644).chown("ownerdir/f", 1000, 2000)
	bot.file("ownerdir/g3000", "other group\n", 0o755).chown("ownerdir/g3000", 1000, 3000)
	bot.file("sticky/rootfile", "root's\n", 0o666)
	bot.file("sticky/userfile", "user's\n", 0o666).chown("sticky/userfile", 1000, 2000)
	// File capabilities (cap_net_raw), which chown and a write by
	// another user must drop, as setuid.
	for _, n := range []string{"capfile", "capfile-chown", "capfile-ww"} {
		bot.file(n, "has file capabilities\n", 0o755).xattr(n, "security.capability", fileCaps(13))
	}
	bot.must(unix.Chmod(bot.p("capfile-ww"), 0o777), "chmod", "capfile-ww")
	for i := 0; i < 24; i++ {
		bot.file(fmt.Sprintf("many/sub/f%02d", i), "0123456789abcdefghijklmnopqrstuvwxyz\n", 0o644)
	}
}
