package overlayfuse_test

// The operation sequences of the differential tests.

import (
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

const (
	wr   = unix.O_WRONLY
	rw   = unix.O_RDWR
	crt  = unix.O_CREAT
	excl = unix.O_EXCL
	trnc = unix.O_TRUNC
	apnd = unix.O_APPEND
)

// opFails turns any error of s into "fails", for calls whose errno
// legitimately differs (e.g. getxattr of a hidden private xattr:
// ENODATA or EOPNOTSUPP both hide it).
func opFails(s step) step {
	return step{name: s.name + " (must fail, any errno)", do: func(r string) (string, error) {
		out, err := s.do(r)
		if err != nil {
			return "fails", nil
		}
		return "succeeds: " + out, nil
	}}
}

// readOnlySteps: every change fails with EROFS, reads work.
var readOnlySteps = []step{
	opOpenWrite("a/f1", wr, 0, 0, "x"),
	opOpenWrite("a/f1", rw, 0, 0, ""),
	opOpenWrite("a/f1", unix.O_RDONLY, 0, 0, ""),
	opOpenWrite("newfile", wr|crt, 0o644, 0, ""),
	opMkdir("newdir", 0o755),
	opMkdir("a", 0o755),
	opUnlink("a/f1"),
	opRmdir("emptydir"),
	opRename("a/f1", "a/f9", 0),
	opChmod("a/f1", 0o600),
	opLchown("a/f1", 1000, 2000),
	opTruncate("a/f1", 0),
	opUtimes("a/f1", fixedTime),
	opSetxattr("a/f1", "user.x", "1"),
	opRemovexattr("xattrs", "user.foo"),
	opSymlink("a/f1", "newlink"),
	opLink("a/f1", "newlink"),
	opMknod("newfifo", unix.S_IFIFO|0o644, 0, 0),
	opFchmodRO("a/f2", 0o600),
	opFsetxattrRO("a/f2", "user.x", "1"),
	opChattr("a/f2"),
	opRemoveAll("merged"),
	opRead("a/f1"),
	opReaddir("merged"),
	opGetxattr("xattrs", "user.foo"),
}

var scenarios = []scenario{
	{name: "initial"},
	{name: "readonly-noupper", ro: roNoUpper, steps: readOnlySteps},
	{name: "readonly-option", ro: roOption, steps: readOnlySteps},
	{
		name: "whiteouts",
		steps: []step{
			opUnlink("a/f1"),
			opStat("a/f1"),
			opUnlink("a/f1"),      // ENOENT
			opUnlink("gone-file"), // ENOENT: whited out by L1
			opRmdir("gone-dir"),   // ENOENT
			opStat("gone-dir/x"),
			opRmdir("a/sub"),  // ENOTEMPTY: lower child
			opRmdir("merged"), // ENOTEMPTY: children in three layers
			opRmdir("a/f2"),   // ENOTDIR
			opUnlink("a"),     // EISDIR
			opRemoveAll("merged"),
			opStat("merged"),
			opRemoveAll("rmtree"),
			opReaddir("."),
			opOpenWrite("a/f1", wr|crt|excl, 0o644, 0, "recreated\n"),
			opRead("a/f1"),
			// A directory made where a lower one was deleted must be
			// opaque, or the old lower children come back.
			opMkdir("merged", 0o755),
			opReaddir("merged"),
			opStat("merged/top"),
			opMkdir("rmtree", 0o700),
			opMkdir("rmtree/a", 0o700),
			opReaddir("rmtree/a"),
			opMkdir("gone-dir", 0o700),
			opReaddir("gone-dir"),
			opOpenWrite("gone-file", wr|crt, 0o600, 0, "new\n"),
			opUnlink("a/sub/deep"),
			opRmdir("a/sub"), // only whiteouts left: empty
			opMkdir("a/sub", 0o755),
			opReaddir("a/sub"),
			opUnlink("fifo"),
			opUnlink("chardev"),
			opUnlink("link-rel"),
			opUnlink("dangling"),
			opRmdir("emptydir"),
			opMkdir("emptydir", 0o711),
			opUnlink("x/own"),
			opReaddir("x"), // L2's x -> /etc must not show through
			opRmdir("x"),
			opStat("x"),
			opRemoveAll("opq"),
			opMkdir("opq", 0o755),
			opReaddir("opq"),
			opUnlink("d2f"),
			opStat("d2f"),
			opMkdir("d2f", 0o755), // over L2's dir d2f: must be opaque
			opReaddir("d2f"),
			opRmdir("f2d"), // ENOTEMPTY
			opRemoveAll("f2d"),
			opStat("f2d"),
			opOpenWrite("f2d", wr|crt, 0o644, 0, "file again\n"),
			opRmdir("merged"),
			opOpenWrite("merged", wr|crt|excl, 0o644, 0, "a file now\n"),
			opStat("merged/top"), // ENOTDIR
			opUnlink("gone-file"),
			opStat("gone-file"),
		},
	},
	{
		name:  "copyup",
		build: buildStdWithSparse,
		steps: []step{
			opOpenWrite("file0600", wr, 0, 0, "X"),
			opOpenWrite("owned", rw, 0, 6, "+rdwr"),
			opOpenWrite("xattrs", wr|trnc, 0, 0, ""),
			opOpenWrite("a/newtop", wr|apnd, 0, 0, "appended\n"),
			opOpenWrite("single", unix.O_RDONLY, 0, 0, ""),
			opOpenWrite("empty", rw, 0, 0, ""),
			opTruncate("setuid", 3),
			opChmod("a/f2", 0o640),
			opLchown("a/sub/deep", 1000, 2000),
			opLchown("link-rel", 1000, 2000), // symlink copy-up keeps trusted.sym
			opUtimes("merged/bottom", fixedTime),
			opUtimes("dangling", fixedTime),
			opSetxattr("a/f1", "user.new", "v"),
			opSetxattr("merged/sub/b", "trusted.new", "tv"),
			opRemovexattr("dirx", "user.foo"), // directory copy-up
			opSetxattr("dirx", "trusted.new", "d"),
			opGetxattr("dirx", "trusted.bar"),
			opListxattr("dirx"),
			opReaddir("dirx"),
			opOpenWrite("dirx/inner", wr|apnd, 0, 0, "more\n"),
			// Copy-up of a file three directories deep in merged
			// and lower-only directories: the parents come up
			// with their modes, owners and times.
			opOpenWrite("rmtree/a/b/d", wr|apnd, 0, 0, "deep copy-up\n"),
			opReaddir("rmtree/a"),
			opChmod("lowerdir", 0o700),
			opReaddir("lowerdir"),
			opLink("ren/src", "ren/src-link"),
			opStat("ren/src"),
			opRename("ren/x", "ren/x-renamed", 0),
			opChmod("fifo", 0o600),
			opLchown("chardev", 1000, 2000),
			opStat("chardev"),
			opChmod("sparse", 0o600),
			opOpenWrite("sparse2", wr, 0, 0, "Z"),
			opReadBeforeCopyUp("opq/new", "NEW"),
			opInoStable("merged/middle", opChmod("merged/middle", 0o600)),
			opInoStable("merged/sub/t", opOpenWrite("merged/sub/t", wr|apnd, 0, 0, "t2\n")),
			opInoStable("merged", opChmod("merged", 0o700)),
			opStat("setuid"),
			opMmapWrite("merged/sub/b", "M"),
			opChattr("a/sub/deep"),
		},
		sut: checkSparse,
	},
	{
		name:  "fds",
		build: buildStdWithBigDir,
		steps: []step{
			opFdUnlinkRead("a/f1"),
			opFdUnlinkWrite("a/f2"),
			opFdRenameWrite("single", "ren/single-moved"),
			opFchmodRO("file0600", 0o640),
			opFchownRO("owned", 1001, 2001),
			opFsetxattrRO("xattrs", "user.fd", "fdv"),
			opFtruncate("merged/bottom", 2),
			opTwoAppenders("merged/middle"),
			opRewindDir("a", "a/new-during-readdir"),
			opRewindDir("merged", "merged/new"),
			opGetdents("big"),
			opMmapWrite("a/newtop", "MM"),
			opUnlink("big/entry-with-a-rather-long-name-001"),
			opUnlink("big/entry-with-a-rather-long-name-100"),
			opOpenWrite("big/entry-with-a-rather-long-name-014", wr|crt|excl, 0o644, 0, "back\n"),
			opGetdents("big"),
			opRemoveAll("big"),
			opGetdents("."),
			opWhileOpenRO("merged/top", opOpenWrite("merged/top", wr|apnd, 0, 0, "appended\n")),
			opWhileOpenRO("merged/sub/b", opTruncate("merged/sub/b", 0)),
			opWhileOpenRO("merged/sub/t", opMmapWrite("merged/sub/t", "W")),
			opWhileOpenRO("owned", opOpenWrite("owned", rw|trnc, 0, 0, "new")),
			opWhileOpenRO("xattrs", opChmod("xattrs", 0o600)),
			opWhileOpenRO("xattrs", opOpenWrite("xattrs", wr, 0, 0, "X")),
			opWhileOpenRO("rmtree/top", opRename("rmtree/top", "rmtree/top2", 0)),
			opWhileOpenRO("rmtree/top2", opOpenWrite("rmtree/top2", wr|apnd, 0, 0, "moved\n")),
		},
	},
	{
		name: "rename",
		steps: []step{
			opRename("ren/src", "ren/newname", 0),
			opStat("ren/src"),
			opRead("ren/newname"),
			opRename("ren/x", "ren/y", 0), // over an existing lower file
			opRead("ren/y"),
			opStat("ren/x"),
			opRename("a/f1", "ren/dst", unix.RENAME_NOREPLACE), // EEXIST
			opRename("a/f1", "ren/fresh", unix.RENAME_NOREPLACE),
			opStat("a/f1"),
			opRename("ren/dst", "ren/fresh", unix.RENAME_EXCHANGE),
			opRead("ren/dst"),
			opRead("ren/fresh"),
			opRename("single", "gone-file", 0), // onto a name a lower whiteout hides
			opRead("gone-file"),
			opRename("a/newtop", "opq/old1", 0), // onto a name the opaque dir hides
			opReaddir("opq"),
			opMkdir("newdir", 0o755),
			opOpenWrite("newdir/f", wr|crt, 0o644, 0, "f\n"),
			opRename("newdir", "newdir2", 0), // a dir only in upper: fine for the kernel too
			opReaddir("newdir2"),
			opRename("ren/y", "newdir2", 0), // EISDIR
			opRename("newdir2", "ren/y", 0), // ENOTDIR
			opMkdir("newdir3", 0o755),
			opRename("newdir3", "newdir2", 0), // ENOTEMPTY
			opRename("newdir2/f", "newdir3/f", 0),
			opRename("newdir3", "newdir2", 0), // over an empty dir
			opReaddir("newdir2"),
			opRename("fifo", "ren/fifo-moved", 0),
			opRename("link-rel", "ren/link-moved", 0),
			opStat("ren/link-moved"),
			opRename("ren/newname", "ren/newname", 0),
			opRename("ren/fresh", "gone-dir/x", 0), // ENOENT
			opRename("opq/new", "ren/from-opq", 0),
			opRename("ren/y", "ren/link-moved", unix.RENAME_EXCHANGE), // file <-> symlink
			opStat("ren/y"),
			opRename("d2f", "f2d/child", 0),
			opReaddir("f2d"),
			opRename("chardev", "a/sub/chardev", 0),
			opRename("ren/y", "ren/y", unix.RENAME_NOREPLACE), // EEXIST
			// A directory moved onto the name of a deleted lower
			// directory must hide that directory's old children.
			opRemoveAll("merged"),
			opMkdir("newx", 0o755),
			opOpenWrite("newx/f", wr|crt, 0o644, 0, "f\n"),
			opRename("newx", "merged", 0),
			opReaddir("merged"),
			opRemoveAll("lowerdir/sub"),
			opMkdir("newy", 0o755),
			opRename("newy", "lowerdir/sub", 0),
			opReaddir("lowerdir/sub"),
			opReaddir("ren"),
		},
	},
	{
		name: "edge",
		steps: []step{
			opStat(".wh.notawhiteout"),
			opChmod(".wh.notawhiteout", 0o600),
			opUnlink(longName),
			opStat(longName),
			opOpenWrite(longName, wr|crt|excl, 0o644, 0, "new long\n"),
			opOpenWrite(longName+"x", wr|crt, 0o644, 0, ""), // ENAMETOOLONG
			opRename("sp ace\ttab", "ünïcødé-renamed", 0),
			opChmod("ünïcødé", 0o600),
			opChmod("mode0000", 0o400),
			opOpenWrite("mode0000", wr|apnd, 0, 0, "root writes anyway\n"),
			opOpenWrite("dir0500/f", wr|apnd, 0, 0, "copied up into a 0500 dir\n"),
			opOpenWrite("dir0500/new", wr|crt, 0o644, 0, "created in a 0500 dir\n"),
			opMkdir("sticky/d", 0o755),
			opLchown("longlink", 1000, 2000),
			opStat("longlink"),
			opGetxattr("bigxattr", "user.big"),
			opSetxattrFlags("bigxattr", "user.big2", 500, 0),
			opSetxattrFlags("bigxattr", "user.big", 10, unix.XATTR_CREATE), // EEXIST
			opSetxattrFlags("single", "user.none", 10, unix.XATTR_REPLACE), // ENODATA
			opRemovexattr("single", "user.none"),                           // ENODATA
			opSetxattrFlags("single", "user.overlay.opaque", 1, 0),         // not private with trusted.overlay
			opChmod("acl", 0o640),                                          // the ACL mask follows
			opGetxattr("acl", "system.posix_acl_access"),
			opOpenWrite("acldir/new", wr|crt, 0o666, 0, "inherits the default ACL\n"),
			opStat("acldir/new"),
			opListxattr("acldir/new"),
			opMkdir("acldir/nd", 0o777),
			opStat("acldir/nd"),
			opMknod("wh", unix.S_IFCHR|0o600, 0, 0),        // a whiteout by hand: EPERM
			opMknod("gone-file", unix.S_IFCHR|0o600, 0, 0), // EPERM
			opOpenWrite("single", unix.O_RDONLY|trnc, 0, 0, ""),
			opTruncate("a/f1", 100000),
			opCopyFileRange("merged/top", "cfr-copy"),
			opFallocate("a/f2", 8192),
			opTimes("merged/bottom", opChmod("merged/bottom", 0o600)),
			opTimes("merged/middle", opOpenWrite("merged/middle", wr|apnd, 0, 0, "w\n")),
			opTimes("merged/top", opLink("merged/top", "merged/top-link")),
			opTimes("merged/sub/b", opSetxattr("merged/sub/b", "user.t", "1")),
			opTimes("merged/sub/t", opRead("merged/sub/t")),
			opTimes("merged", opOpenWrite("merged/new", wr|crt, 0o644, 0, "")),
			opTimes("dirx", opChmod("dirx", 0o700)),
			opTimes("a/sub", opRename("a/sub/deep", "a/deep", 0)),
			opChmod("sock", 0o700),
			opLchown("blkdev", 1000, 2000),
			opStat("blkdev"),
			opTmpfile("lowerdir"),
			opReaddir("lowerdir"),
		},
	},
	{
		// Permission checks and ownership with an unprivileged caller
		// (uid 1000, gid 2000; "owned", "dirx" and "ownerdir" are
		// theirs), and privilege bits a write or chown must drop.
		name:  "users",
		build: buildStdForUsers,
		steps: []step{
			asUser(1000, 2000, opOpenWrite("suidw", wr|apnd, 0, 0, "x\n")),
			opStat("suidw"), // setuid dropped
			asUser(1000, 2000, opOpenWrite("sgidw", wr|apnd, 0, 0, "x\n")),
			opStat("sgidw"), // setgid (with group exec) dropped
			opLchown("setuid", 0, 0),
			opStat("setuid"), // chown drops setuid, even by root
			asUser(1000, 2000, opOpenWrite("owned", wr|apnd, 0, 0, "u\n")),
			asUser(1000, 2000, opOpenWrite("single", wr|apnd, 0, 0, "u\n")), // EACCES
			asUser(1000, 2000, opRead("file0600")),                          // EACCES
			asUser(1000, 2000, opRead("owned")),
			asUser(1000, 2000, opChmod("owned", 0o600)),
			asUser(1000, 2000, opChmod("single", 0o600)), // EPERM
			asUser(1000, 2000, opChmod("ownerdir/g3000", 0o2755)),
			opStat("ownerdir/g3000"),                          // not in group 3000: setgid not set
			asUser(1000, 2000, opLchown("owned", 1001, 2000)), // EPERM
			asUser(1000, 2000, opLchown("owned", 1000, 2000)),
			asUser(1000, 2000, opSetxattr("owned", "user.u", "1")),
			asUser(1000, 2000, opSetxattr("single", "user.u", "1")),   // EACCES
			asUser(1000, 2000, opSetxattr("owned", "trusted.u", "1")), // EPERM
			asUser(1000, 2000, opOpenWrite("ownerdir/new", wr|crt, 0o644, 0, "mine\n")),
			opStat("ownerdir/new"),
			asUser(1000, 2000, opMkdir("ownerdir/sub", 0o755)),
			opStat("ownerdir/sub"),
			asUser(1000, 2000, opUnlink("a/f1")), // EACCES
			asUser(1000, 2000, opUnlink("ownerdir/f")),
			asUser(1000, 2000, opOpenWrite("sticky/mine", wr|crt, 0o644, 0, "")),
			asUser(1000, 2000, opUnlink("sticky/rootfile")), // EPERM: sticky
			asUser(1000, 2000, opUnlink("sticky/userfile")),
			asUser(1000, 2000, opRename("owned", "ownerdir/owned", 0)), // EACCES
			asUser(1000, 2000, opRename("ownerdir/new", "ownerdir/new2", 0)),
			asUser(1000, 2000, opMknod("ownerdir/fifo", unix.S_IFIFO|0o644, 0, 0)),
			asUser(1000, 2000, opMknod("ownerdir/chr", unix.S_IFCHR|0o600, 1, 3)), // EPERM
			asUser(1000, 2000, opLink("single", "ownerdir/single-link")),          // EPERM: protected_hardlinks
			asUser(1000, 2000, opLink("owned", "ownerdir/owned-link")),
			asUser(1000, 2000, opUtimes("owned", fixedTime)),
			asUser(1000, 2000, opUtimes("single", fixedTime)), // EPERM
			asUser(1000, 2000, opTruncate("single", 0)),       // EACCES
			asUser(1000, 2000, opOpenWrite("dirx/new", wr|crt, 0o644, 0, "")),
			asUser(1000, 2000, opReaddir("dirx")),
			asUser(1000, 2000, opOpenWrite("sgid/u", wr|crt, 0o644, 0, "")),
			opStat("sgid/u"),
			asUser(1000, 2000, opOpenWrite("a/u", wr|crt, 0o644, 0, "")), // EACCES
			asUser(1001, 2001, opReaddir("dirx")),                        // EACCES
			asUser(1000, 2000, opAccess("single", unix.W_OK)),            // EACCES
			asUser(1000, 2000, opAccess("owned", unix.R_OK|unix.W_OK)),
			asUser(1000, 2000, opAccess("dirx", unix.X_OK)),
			asUser(1000, 2000, opTouchNow("capfile-ww")), // write permission suffices
			asUser(1000, 2000, opTouchNow("single")),     // EACCES
			asUser(1000, 2000, opLchown("owned", -1, -1)),
			opGetxattr("capfile", "security.capability"),
			opChmod("capfile", 0o750), // copy-up keeps file capabilities
			opGetxattr("capfile", "security.capability"),
			opLchown("capfile-chown", 0, 0), // chown drops them
			opListxattr("capfile-chown"),
			asUser(1000, 2000, opOpenWrite("capfile-ww", wr|apnd, 0, 0, "x\n")), // so does a write
			opListxattr("capfile-ww"),
			opShellAs(1000, 2000, "echo hi >> owned && cat owned"),
			opShellAs(1000, 2000, "echo hi >> single"),
			opShellAs(1000, 2000, "cat file0600"),
			opShellAs(1000, 2000, "mkdir ownerdir/shdir && touch ownerdir/shdir/f && stat -c '%a %u %g %n' ownerdir/shdir/f"),
			opShellAs(1000, 2000, "ls dirx && rm dirx/inner && ls dirx"),
			opShellAs(1001, 2001, "ls dirx"),
			opShellAs(1000, 2000, "chmod 0700 ownerdir && stat -c '%a %u %g %n' ownerdir"),
			opShellAs(1001, 2001, "ls ownerdir"),
		},
	},
	{
		// Copy-ups racing each other: of one file, and of many files
		// of one lower-only directory (and so of their parent).
		name:  "concurrency",
		build: buildStdForUsers,
		skip: map[string]map[string]string{
			// Concurrent copy-ups race to restore the parent's
			// times: the result varies on the kernel too.
			"many":     {"mtime": "racy"},
			"many/sub": {"mtime": "racy"},
		},
		steps: []step{
			opConcurrentWrites("many/sub/f00", 16),
			opConcurrent("chmod 12 files of many/sub at once",
				opChmod("many/sub/f01", 0o600), opChmod("many/sub/f02", 0o600), opChmod("many/sub/f03", 0o600),
				opChmod("many/sub/f04", 0o600), opChmod("many/sub/f05", 0o600), opChmod("many/sub/f06", 0o600),
				opChmod("many/sub/f07", 0o600), opChmod("many/sub/f08", 0o600), opChmod("many/sub/f09", 0o600),
				opChmod("many/sub/f10", 0o600), opChmod("many/sub/f11", 0o600), opChmod("many/sub/f12", 0o600)),
			opConcurrent("unlink, rename and write files of many/sub at once",
				opUnlink("many/sub/f13"), opUnlink("many/sub/f14"), opRename("many/sub/f15", "many/f15", 0),
				opRename("many/sub/f16", "many/sub/f16b", 0), opOpenWrite("many/sub/f17", wr|trnc, 0, 0, "t"),
				opOpenWrite("many/sub/f18", wr|apnd, 0, 0, "a"), opSetxattr("many/sub/f19", "user.c", "1"),
				opLink("many/sub/f20", "many/f20-link")),
			opReaddir("many/sub"),
		},
	},
	{
		// An upper dir written by the kernel (whiteouts, opaque dirs,
		// origin/impure xattrs, copied-up files), as a snapshot left
		// by kernel overlayfs or a restart would present it.
		name: "kernel-upper",
		prepare: []step{
			opUnlink("a/f1"),
			opRemoveAll("merged"),
			opMkdir("merged", 0o755),
			opOpenWrite("merged/new", wr|crt, 0o644, 0, "new\n"),
			opChmod("a/f2", 0o640),
			opSetxattr("xattrs", "user.new", "v"),
			opRename("ren/src", "ren/newname", 0),
			opLink("ren/x", "ren/x-link"),
			opMknod("newfifo", unix.S_IFIFO|0o644, 0, 0),
			opSymlink("a/f2", "newlink"),
			opOpenWrite("owned", wr|apnd, 0, 0, "more\n"),
			opRemoveAll("opq"),
			opMkdir("opq", 0o755),
			opOpenWrite("opq/x", wr|crt, 0o644, 0, ""),
			opUnlink("d2f"),
			opMkdir("d2f", 0o755),
			opRemoveAll("rmtree/a/b"),
			opOpenWrite("dirx/inner", wr|apnd, 0, 0, "more\n"),
		},
		steps: []step{
			opReaddir("merged"),
			opReaddir("opq"),
			opReaddir("d2f"),
			opReaddir("rmtree/a"),
			opStat("a/f1"),
			opStat("ren/x-link"),
			opOpenWrite("a/f2", wr|apnd, 0, 0, "w\n"),
			opUnlink("merged/new"),
			opRmdir("merged"),
			opStat("merged"),
			opOpenWrite("a/f1", wr|crt|excl, 0o644, 0, "again\n"),
			opUnlink("ren/x"),
			opRead("ren/x-link"),
			opRemoveAll("dirx"),
			opMkdir("dirx", 0o755),
			opReaddir("dirx"),
			opRename("ren/newname", "ren/src", 0),
			opReaddir("."),
		},
	},
	{
		// Hard links stay links after copy-up, which kernel
		// overlayfs (index=off) does not do: the reference is a plain
		// directory (design.md §3).
		name: "hardlinks",
		ref:  refPlain,
		steps: []step{
			opSameIno("hl1", "hl2"),
			opRename("hl1", "hl2", 0), // two names of one inode: a no-op
			opReaddir("."),
			opConcurrentWrites("hl1", 8),
			opOpenWrite("hl1", wr|apnd, 0, 0, "more\n"),
			opRead("hl2"),
			opStat("hl1"),
			opStat("hl2"),
			opSameIno("hl1", "hl2"),
			opChmod("hl2", 0o600),
			opStat("hl1"),
			opLink("hl2", "hl3"),
			opStat("hl1"),
			opRename("hl1", "a/hl1-moved", 0), // the kernel shows nlink 1 here
			opRead("a/hl1-moved"),
			opOpenWrite("hl3", wr|trnc, 0, 0, "t\n"),
			opRead("hl2"),
			opSameIno("a/hl1-moved", "hl3"),
			opInoStable("single", opChmod("single", 0o600)),
			opLink("a/f1", "a/f1-link"),
			opOpenWrite("a/f1-link", wr|apnd, 0, 0, "via link\n"),
			opRead("a/f1"),
			opStat("a/f1"),
			opRename("a/f1", "a/f1-link", 0), // a no-op again, now in upper
			opStat("a/f1"),
			// A link inside a lower directory that is then renamed
			// (copied, for overlayfuse) must stay a link.
			opLink("hl2", "lowerdir/hl-in-dir"),
			opRename("lowerdir", "lowerdir-moved", 0),
			opOpenWrite("hl2", wr|apnd, 0, 0, "after the dir moved\n"),
			opRead("lowerdir-moved/hl-in-dir"),
			opSameIno("hl2", "lowerdir-moved/hl-in-dir"),
		},
	},
	{
		// Unlinking one name of a lower hard-linked pair: a plain
		// filesystem counts the other down to nlink 1. (The kernel
		// keeps showing the lower file's nlink 2.) overlayfuse counts
		// the names that go while the file is in use; once the
		// kernel forgets an unused file, its st_nlink may count
		// removed lower names again (README). So the file is held
		// from before the unlink to the end, and so is the node the
		// write opens (with passthrough it may be a new one).
		name: "hardlinks-unlink",
		ref:  refPlain,
		steps: []step{
			opHold("hl1"),
			opUnlink("hl2"),
			opStat("hl1"),
			opOpenWriteHeld("hl1", wr|apnd, 0, 0, "more\n"),
			opStat("hl1"),
			opLink("hl1", "hl3"),
			opStat("hl3"),
			opSameIno("hl1", "hl3"),
			opRead("hl3"),
		},
	},
	{
		// Renaming a directory that is in a lower layer: the kernel
		// without redirect_dir answers EXDEV; overlayfuse must do it
		// (design.md §3), so the reference is a plain directory.
		name: "renamedir",
		ref:  refPlain,
		steps: []step{
			opRename("lowerdir", "lowerdir2", 0),
			opReaddir("lowerdir2"),
			opRead("lowerdir2/sub/grandchild"),
			opStat("lowerdir"),
			opMkdir("lowerdir", 0o755),
			opReaddir("lowerdir"),
			opRename("merged", "a/merged-moved", 0),
			opReaddir("a/merged-moved"),
			opReaddir("a/merged-moved/sub"),
			opRename("dirx", "emptydir", 0),
			opReaddir("emptydir"),
			opRename("a/sub", "opq/sub", 0),
			opReaddir("opq/sub"),
			opMkdir("newdir", 0o755),
			opOpenWrite("newdir/f", wr|crt, 0o644, 0, "f\n"),
			opRename("emptydir", "newdir", unix.RENAME_EXCHANGE), // lower dir <-> upper dir
			opReaddir("emptydir"),
			opReaddir("newdir"),
			opRename("rmtree", "f2d", unix.RENAME_EXCHANGE),
			opReaddir("rmtree"),
			opReaddir("f2d"),
			opRename("lowerdir2", "lowerdir", unix.RENAME_NOREPLACE), // EEXIST
			opRemoveAll("lowerdir"),
			opRename("lowerdir2", "lowerdir", 0),
			opReaddir("lowerdir"),
			opOpenWrite("a/merged-moved/top", wr|apnd, 0, 0, "moved\n"),
			opRead("a/merged-moved/top"),
			opRename("a/merged-moved", "merged", 0),
			opReaddir("merged"),
			opRemoveAll("merged"),
			opMkdir("merged", 0o755),
			opReaddir("merged"),
		},
	},
	{
		name: "create",
		steps: []step{
			opMknod("newfifo", unix.S_IFIFO|0o640, 0, 0),
			opMknod("newchr", unix.S_IFCHR|0o600, 1, 5),
			opSymlink("a/f1", "newlink"),
			opSymlink("/nonexistent/abs", "a/newabs"),
			opMkdir("newdir", 0o750),
			opMkdir("a/newsub", 0o700),
			opOpenWrite("a/f1", wr|crt|excl, 0o644, 0, ""), // EEXIST
			opOpenWrite("gone-file", wr|crt|excl, 0o640, 0, "new gone\n"),
			opOpenWrite("new", rw|crt|excl, 0o600, 0, "new\n"),
			opMkdir("a", 0o755),                             // EEXIST
			opMkdir("gone-file", 0o755),                     // EEXIST
			opSymlink("x", "a/f2"),                          // EEXIST
			opLink("single", "a/f1"),                        // EEXIST
			opMknod("fifo", unix.S_IFIFO, 0, 0),             // EEXIST
			opOpenWrite("gone-dir/x", wr|crt, 0o644, 0, ""), // ENOENT
			opMkdir("gone-dir/sub", 0o755),                  // ENOENT
			opOpenWrite("single/x", wr|crt, 0o644, 0, ""),   // ENOTDIR
			opOpenWrite("opq/old1", wr|crt|excl, 0o644, 0, "again\n"),
			opOpenWrite("sgid/new", wr|crt, 0o644, 0, "g\n"),
			opStat("sgid/new"),
			opMkdir("sgid/newdir", 0o755),
			opStat("sgid/newdir"),
			opOpenWrite("f2d/new", wr|crt, 0o644, 0, "n\n"),
			opOpenWrite("d2f/child", wr|crt, 0o644, 0, ""), // ENOTDIR
			opMkdir("merged/sub/new", 0o755),
			opOpenWrite("merged/sub/new/f", wr|crt, 0o644, 0, "deep new\n"),
			opOpenWrite("dangling", wr|crt, 0o644, 0, ""), // ENOENT: follows to no/such/target
			opLink("new", "a/new-link"),
			opStat("new"),
			opLink("gone-file", "gone-dir"), // a name whited out below
			opStat("gone-dir"),
			opStatfs(),
			opReaddir("."),
		},
	},
	{
		name: "opaque",
		steps: []step{
			opReaddir("opq"),
			opStat("opq/old1"),
			opRead("opq/new"),
			opFails(opGetxattr("opq", xattrOpaque)),
			opListxattr("opq"),
			opReaddir("f2d"),
			opRead("f2d/child"),
			opStat("d2f"),
			opStat("d2f/child"), // ENOTDIR
			opReaddir("merged"),
			opReaddir("merged/sub"),
			opUnlink("opq/new"),
			opReaddir("opq"),
			opRmdir("opq"), // holds only a whiteout now
			opStat("opq"),
			opMkdir("opq", 0o755),
			opReaddir("opq"),
			opOpenWrite("opq/old2", wr|crt|excl, 0o644, 0, "mine\n"),
			opReaddir("opq"),
			opChmod("merged/sub", 0o700), // copy-up of a merged dir: not opaque
			opReaddir("merged/sub"),
			opOpenWrite("merged/sub/new", wr|crt, 0o644, 0, ""),
			opReaddir("merged/sub"),
		},
	},
	{
		// Layer symlinks that point out of the overlay must never be
		// followed by the overlay itself. L0's dir x and L1's dir w
		// sit over L2's symlinks x -> /etc and w -> <canary>; y -> /etc
		// and yc -> <canary> are plain lower symlinks. Writes only go
		// near the canary, never near /etc.
		name: "symlinktrap",
		steps: []step{
			opReaddir("x"),
			opStat("x/passwd"),
			opStat("x/hostname"),
			opRead("x/own"),
			opReaddir("w"),
			opStat("w/passwd"),
			opOpenWrite("w/z", wr|crt, 0o644, 0, "z\n"),
			opMkdir("w/keep", 0o755),
			opSymlink("passwd", "w/lnk"),
			opRename("w/own", "w/own2", 0),
			opUnlink("w/own2"),
			opChmod("w", 0o700),
			opLchown("w", 1000, 2000),
			opSetxattr("w", "user.t", "1"),
			opReaddir("w"),
			opRemoveAll("w"),
			opStat("w"),
			opMkdir("w", 0o755),
			opReaddir("w"),
			opOpenWrite("w/passwd", wr|crt, 0o644, 0, "mine\n"),
			opStat("y"),
			opCreateInRoot("y/z"), // ENOENT: /etc resolves to <mnt>/etc
			opCreateInRoot("yc/z"),
			opLchown("yc", 1000, 2000), // symlink copy-up
			opSetxattr("yc", "trusted.t", "1"),
			opUtimes("yc", fixedTime),
			opStat("yc"),
			opUnlink("yc"),
			opMkdir("yc", 0o755),
			opOpenWrite("yc/passwd", wr|crt, 0o644, 0, "not the canary\n"),
			opReaddir("yc"),
			opMkdir("x/keep", 0o755),
			opRemoveAll("x"),
			opMkdir("x", 0o755),
			opReaddir("x"),
		},
	},
}

// sutConfigs are the overlayfuse mount options every scenario runs
// with: the default (passthrough where the kernel has it), and in-process
// I/O with strict consistency, which serve file data differently.
var sutConfigs = []struct {
	name string
	opts overlayfuse.Options
}{
	{"default", overlayfuse.Options{}},
	{"nopassthrough-strict", overlayfuse.Options{Passthrough: overlayfuse.PassthroughOff, Consistency: overlayfuse.ConsistencyStrict}},
}

func TestDiffOverlay(t *testing.T) {
	for i, cfg := range sutConfigs {
		if i > 0 && sutIsKernel() {
			break // options of overlayfuse: nothing to vary on the kernel
		}
		t.Run(cfg.name, func(t *testing.T) {
			for _, sc := range scenarios {
				t.Run(sc.name, func(t *testing.T) {
					t.Parallel()
					runScenario(t, sc, cfg.opts)
				})
			}
		})
	}
}

// checkSparse: copy-up keeps holes (design.md §3), both in the upper file
// and as SEEK_DATA/SEEK_HOLE through the mount. The copyup scenario
// copies "sparse" and "sparse2" (data at [1M,1M+4K) and [3M,3M+4K) of 4M)
// up, the first with chmod, the second by a write open that then writes
// one byte at 0. The kernel copies in 1 MiB chunks and skips only whole
// holeless chunks, so data may spread to [1M,2M) and [3M,4M), but [0,1M)
// (after the first block for sparse2) and [2M,3M) must stay holes. Only
// the system under test is held to it.
func checkSparse(t *testing.T, sut *side) {
	const mib = 1 << 20
	checkHoles(t, sut, "sparse", [][2]int64{{0, mib}, {2 * mib, 3 * mib}},
		[][2]int64{{mib, mib + 4096}, {3 * mib, 3*mib + 4096}})
	checkHoles(t, sut, "sparse2", [][2]int64{{4096, mib}, {2 * mib, 3 * mib}},
		[][2]int64{{0, 1}, {mib, mib + 4096}, {3 * mib, 3*mib + 4096}})
}

func checkHoles(t *testing.T, sut *side, rel string, holes, datas [][2]int64) {
	t.Helper()
	check := func(where, root string) {
		t.Helper()
		m, err := opSeekMap(rel).do(root)
		if err != nil {
			t.Errorf("%s %s after copy-up: SEEK_DATA/SEEK_HOLE: %v", rel, where, err)
			return
		}
		var extents [][2]int64
		for _, f := range strings.Fields(m) {
			var a, b int64
			if _, err := fmt.Sscanf(f, "data[%d,%d)", &a, &b); err != nil {
				t.Fatalf("parsing %q: %v", m, err)
			}
			extents = append(extents, [2]int64{a, b})
		}
		overlaps := func(x, y [2]int64) bool { return x[0] < y[1] && y[0] < x[1] }
		for _, h := range holes {
			for _, e := range extents {
				if overlaps(h, e) {
					t.Errorf("%s %s after copy-up: SEEK_DATA/SEEK_HOLE map %s: hole [%d,%d) filled (holes lost)", rel, where, m, h[0], h[1])
				}
			}
		}
		for _, d := range datas {
			found := false
			for _, e := range extents {
				found = found || (e[0] <= d[0] && d[1] <= e[1])
			}
			if !found {
				t.Errorf("%s %s after copy-up: SEEK_DATA/SEEK_HOLE map %s: data [%d,%d) missing", rel, where, m, d[0], d[1])
			}
		}
	}
	check("through "+sut.name, sut.root)
	check("in "+sut.name+"'s upper dir", sut.upper)
	var st unix.Stat_t
	if err := unix.Lstat(join(sut.upper, rel), &st); err != nil {
		t.Errorf("%s in upper: %v", rel, err)
	} else if st.Blocks*512 > 3<<20 {
		t.Errorf("%s in %s's upper dir uses %d bytes on disk for 12 KiB of data: holes lost", rel, sut.name, st.Blocks*512)
	}
}

// TestDiffPrivateXattrs: trusted.overlay.* cannot be forged through the
// mount. This is an intended divergence: Linux >= 6.7 accepts such a
// setxattr and stores it escaped (trusted.overlay.overlay.opaque), then
// lists it back, though the directory does not become opaque; overlayfuse
// must refuse it (design.md §3 "private xattrs hidden, not forgeable").
func TestDiffPrivateXattrs(t *testing.T) {
	if sutIsKernel() {
		t.Skip("the kernel accepts escaped private xattrs by design")
	}
	canary, _ := newCanary(t)
	runSUTOnly(t, canary, buildStdLayers, overlayfuse.Options{}, func(t *testing.T, sut *side) {
		r := sut.root
		mustOK := func(s step) string {
			t.Helper()
			out, err := s.do(r)
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			return out
		}
		refused := func(s step) {
			t.Helper()
			_, err := s.do(r)
			switch err {
			case unix.EPERM, unix.EINVAL, unix.ENOTSUP:
			case nil:
				t.Errorf("%s: succeeded through %s, want EPERM, EINVAL or ENOTSUP", s.name, sut.name)
			default:
				t.Errorf("%s: %s, want EPERM, EINVAL or ENOTSUP", s.name, errnoName(err))
			}
		}
		aBefore := mustOK(opReaddir("a"))
		refused(opSetxattr("a", xattrOpaque, "y"))
		if got := mustOK(opReaddir("a")); got != aBefore {
			t.Errorf("readdir a after setxattr %s: %s, want %s (made opaque)", xattrOpaque, got, aBefore)
		}
		mustOK(opMkdir("n", 0o755))
		mustOK(opOpenWrite("n/f", wr|crt, 0o644, 0, "f\n"))
		refused(opSetxattr("n", xattrOpaque, "y"))
		refused(opSetxattr("dirx", "trusted.overlay.redirect", "/a"))
		refused(opSetxattr("single", "trusted.overlay.whiteout", "y"))
		refused(opSetxattr("single", "trusted.overlay.metacopy", ""))
		if _, err := opRemovexattr("opq", xattrOpaque).do(r); err == nil {
			t.Errorf("lremovexattr opq %s succeeded through %s", xattrOpaque, sut.name)
		}
		if got := mustOK(opReaddir("opq")); got != "[new]" {
			t.Errorf("readdir opq after removexattr %s: %s, want [new]", xattrOpaque, got)
		}
		if v, err := getXattr(join(r, "opq"), xattrOpaque); err == nil {
			t.Errorf("lgetxattr opq %s through %s = %q, want an error", xattrOpaque, sut.name, v)
		}
		for _, p := range []string{".", "a", "n", "opq", "dirx", "single"} {
			if got := mustOK(opListxattr(p)); strings.Contains(got, xattrOverlayPrefix) {
				t.Errorf("llistxattr %s through %s: %s", p, sut.name, got)
			}
		}
	}, func(t *testing.T, upper tree) {
		for _, p := range []string{"a", "n", "dirx", "single"} {
			if e := upper[p]; e != nil {
				for k, v := range e.Xattrs {
					if strings.HasPrefix(k, xattrOverlayPrefix) && k != "trusted.overlay.origin" && k != "trusted.overlay.impure" {
						t.Errorf("upper dir: %s has %s=%s after a refused setxattr", p, k, v)
					}
				}
			}
		}
	})
}

// runSUTOnly mounts only the system under test, runs fn, unmounts and
// checks the lowers, the upper's format and the kernel oracle; after
// gets the raw upper tree.
func runSUTOnly(t *testing.T, canary string, build func(*layerSet), opts overlayfuse.Options, fn func(*testing.T, *side), after func(*testing.T, tree)) {
	requireMounts(t)
	sut := newSide(t, sideSUT, canary, build, opts, roRW, nil)
	lowersBefore := rawLowers(t, sut.lowers)
	fn(t, sut)
	final, probs := snapshot(sut.root, true)
	report(t, "final tree: "+sut.name+" shows", probs)
	if err := sut.unmount(); err != nil {
		t.Errorf("unmount: %v", err)
	}
	checkAfterUnmount(t, sut, lowersBefore, final)
	if after != nil {
		up, _ := snapshot(sut.upper, false)
		after(t, up)
	}
}

// buildManyLayers makes n layers. Layer age k (0 = bottom) adds f<k> and
// d/k<k>, every third one overrides "common", some whiteout a file or a
// d/ entry of the layer below, one makes d opaque, and dirfile/filedir
// change type twice.
func buildManyLayers(n int) func(*layerSet) {
	return func(s *layerSet) {
		for k := 0; k < n; k++ {
			l := s.layer(n - 1 - k)
			l.file(fmt.Sprintf("f%03d", k), fmt.Sprintf("layer %d\n", k), 0o644)
			l.file(fmt.Sprintf("d/k%03d", k), "", 0o644)
			if k%3 == 0 {
				l.file("common", fmt.Sprintf("common from %d\n", k), 0o600|uint32(k%2)*0o044)
			}
			if k%10 == 5 {
				l.whiteout(fmt.Sprintf("f%03d", k-1))
			}
			if k%20 == 17 {
				l.whiteout(fmt.Sprintf("d/k%03d", k-2))
			}
			if k%25 == 0 {
				l.dir(fmt.Sprintf("tree/l%03d", k), 0o755).xattr(fmt.Sprintf("tree/l%03d", k), "user.layer", fmt.Sprint(k))
				l.file("tree/shared", fmt.Sprintf("shared %d\n", k), 0o644)
			}
			switch k {
			case n * 3 / 5:
				l.opaque("d")
			case n / 2:
				l.file("dirfile/child", "c\n", 0o644)
			case n * 3 / 4:
				l.file("dirfile", "now a file\n", 0o644)
			case n / 4:
				l.file("filedir", "a file\n", 0o644)
			case n * 4 / 5:
				l.file("filedir/child", "now a dir\n", 0o644)
			}
		}
	}
}

func manyLayerSteps(n int) []step {
	return []step{
		opRead("common"),
		opOpenWrite("f000", wr|apnd, 0, 0, "bottom copy-up\n"),
		opUnlink(fmt.Sprintf("f%03d", n-1)),
		opStat("f004"), // whited out
		opReaddir("d"),
		opRemoveAll("d"),
		opMkdir("d", 0o755),
		opReaddir("d"),
		opRename("common", "common2", 0),
		opChmod("tree/shared", 0o600),
		opReaddir("tree"),
		opStat("dirfile"),
		opReaddir("filedir"),
	}
}

// TestDiffManyLayers: 20 layers against the kernel; 200 layers against
// the kernel too (mounted through fsconfig lowerdir+, as mount(2)'s
// option page is too small for 200 paths) and, before any operation,
// against the merged view computed here from the layer directories.
func TestDiffManyLayers(t *testing.T) {
	for _, n := range []int{20, 200} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t.Parallel()
			runScenario(t, scenario{
				name:  fmt.Sprint(n),
				build: buildManyLayers(n),
				steps: manyLayerSteps(n),
			}, overlayfuse.Options{})
		})
	}
	t.Run("200-model", func(t *testing.T) {
		t.Parallel()
		canary, _ := newCanary(t)
		runSUTOnly(t, canary, buildManyLayers(200), overlayfuse.Options{}, func(t *testing.T, sut *side) {
			if len(sut.lowers) != 200 {
				t.Fatalf("built %d layers", len(sut.lowers))
			}
			want, err := modelTree(sut.lowers)
			if err != nil {
				t.Fatal(err)
			}
			got, probs := snapshot(sut.root, true)
			report(t, sut.name+" shows", probs)
			report(t, fmt.Sprintf("200 layers: %s differs from the expected merged view (want = model, got = %s)", sut.name, sut.name),
				diffTrees(want, got, cmpOpts{skip: skipRoot}))
			// Spot checks that the model itself is not vacuous.
			for p, wantType := range map[string]string{"f199": "file", "f004": "", "d/k199": "file", "d/k100": "", "dirfile": "file", "filedir": "dir", "tree/l175": "dir"} {
				e := want[p]
				if (e == nil) != (wantType == "") || (e != nil && e.Type != wantType) {
					t.Errorf("model: %s = %v, want type %q", p, e, wantType)
				}
			}
			if e := want["common"]; e == nil || e.Data != `"common from 198\n"` {
				t.Errorf("model: common = %v", e)
			}
		}, nil)
	})
}
