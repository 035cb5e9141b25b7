package overlayfuse_test

// Operations of the differential tests. Each one runs against a root
// directory (a mount or a plain directory) and returns a result string and
// an error; the runner compares "ok <result>" or the errno name between
// the two sides.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

type step struct {
	name string
	do   func(root string) (string, error)
	// passthroughStale: with FUSE passthrough in the default
	// consistency mode, an fd opened read-only before a copy-up may
	// keep reading the old data (design.md §4), so overlayfuse may
	// answer differently from the kernel here.
	passthroughStale bool
}

// outcome renders a step's result for comparison.
func outcome(out string, err error) string {
	if err != nil {
		return "error " + errnoName(err)
	}
	if out == "" {
		return "ok"
	}
	return "ok " + out
}

func join(root, rel string) string { return filepath.Join(root, rel) }

func opUnlink(rel string) step {
	return step{name: "unlink " + rel, do: func(r string) (string, error) { return "", unix.Unlink(join(r, rel)) }}
}

func opRmdir(rel string) step {
	return step{name: "rmdir " + rel, do: func(r string) (string, error) { return "", unix.Rmdir(join(r, rel)) }}
}

func opMkdir(rel string, mode uint32) step {
	return step{name: fmt.Sprintf("mkdir %s %#o", rel, mode), do: func(r string) (string, error) {
		return "", unix.Mkdir(join(r, rel), mode)
	}}
}

// opRemoveAll is rm -rf through the mount: readdir, unlink, rmdir.
func opRemoveAll(rel string) step {
	return step{name: "rm -rf " + rel, do: func(r string) (string, error) {
		var n int
		var rm func(p string) error
		rm = func(p string) error {
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				n++
				return unix.Unlink(p)
			}
			des, err := os.ReadDir(p)
			if err != nil {
				return err
			}
			for _, de := range des {
				if err := rm(filepath.Join(p, de.Name())); err != nil {
					return err
				}
			}
			n++
			return unix.Rmdir(p)
		}
		err := rm(join(r, rel))
		return fmt.Sprintf("%d removed", n), err
	}}
}

func openFlags(flags int) string {
	var s []string
	switch flags & unix.O_ACCMODE {
	case unix.O_RDONLY:
		s = append(s, "O_RDONLY")
	case unix.O_WRONLY:
		s = append(s, "O_WRONLY")
	case unix.O_RDWR:
		s = append(s, "O_RDWR")
	}
	for _, f := range []struct {
		f int
		n string
	}{{unix.O_CREAT, "O_CREAT"}, {unix.O_EXCL, "O_EXCL"}, {unix.O_TRUNC, "O_TRUNC"}, {unix.O_APPEND, "O_APPEND"}} {
		if flags&f.f != 0 {
			s = append(s, f.n)
		}
	}
	return strings.Join(s, "|")
}

// opOpenWrite opens rel with flags (and mode if it creates), writes data
// at off unless data is empty, then reads the whole file back through the
// same fd when it is readable.
func opOpenWrite(rel string, flags int, mode uint32, off int64, data string) step {
	return openWrite(rel, flags, mode, off, data, false)
}

// opOpenWriteHeld is opOpenWrite keeping the fd open until the scenario
// ends, so the file it wrote stays in use (see opHold).
func opOpenWriteHeld(rel string, flags int, mode uint32, off int64, data string) step {
	s := openWrite(rel, flags, mode, off, data, true)
	s.name += ", kept open"
	return s
}

func openWrite(rel string, flags int, mode uint32, off int64, data string, keep bool) step {
	name := fmt.Sprintf("open %s %s", rel, openFlags(flags))
	if data != "" {
		name += fmt.Sprintf(", pwrite %q at %d", data, off)
	}
	return step{name: name, do: func(r string) (string, error) {
		fd, err := unix.Open(join(r, rel), flags|unix.O_CLOEXEC, mode)
		if err != nil {
			return "", err
		}
		if keep {
			hold(r, fd)
		} else {
			defer unix.Close(fd)
		}
		if data != "" {
			if flags&unix.O_APPEND != 0 {
				_, err = unix.Write(fd, []byte(data))
			} else {
				_, err = unix.Pwrite(fd, []byte(data), off)
			}
			if err != nil {
				return "write", err
			}
		}
		if flags&unix.O_ACCMODE == unix.O_WRONLY {
			return "", nil
		}
		buf := make([]byte, 1<<16)
		n, err := unix.Pread(fd, buf, 0)
		return fmt.Sprintf("reads %q", buf[:max(n, 0)]), err
	}}
}

// held are the fds steps keep open until their scenario ends, by root.
var held struct {
	sync.Mutex
	fds map[string][]int
}

func hold(root string, fd int) {
	held.Lock()
	defer held.Unlock()
	if held.fds == nil {
		held.fds = map[string][]int{}
	}
	held.fds[root] = append(held.fds[root], fd)
}

// releaseHeld closes the fds the steps kept open under root.
func releaseHeld(root string) {
	held.Lock()
	defer held.Unlock()
	for _, fd := range held.fds[root] {
		unix.Close(fd)
	}
	delete(held.fds, root)
}

// opHold keeps rel in use (an O_PATH fd) until the scenario ends: the
// kernel cannot forget its inode, whatever it drops from its caches, so
// the overlay keeps what it learnt about the file (its known hard links).
func opHold(rel string) step {
	return step{name: "hold " + rel + " open (O_PATH) to the end", do: func(r string) (string, error) {
		fd, err := unix.Open(join(r, rel), unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", err
		}
		hold(r, fd)
		return "", nil
	}}
}

func opRead(rel string) step {
	return step{name: "read " + rel, do: func(r string) (string, error) {
		b, err := os.ReadFile(join(r, rel))
		return fmt.Sprintf("%q", b), err
	}}
}

func opStat(rel string) step {
	return step{name: "lstat " + rel, do: func(r string) (string, error) {
		e, _, err := readEntry(join(r, rel))
		if err != nil {
			return "", err
		}
		return e.short(), nil
	}}
}

func opReaddir(rel string) step {
	return step{name: "readdir " + rel, do: func(r string) (string, error) {
		f, err := os.Open(join(r, rel))
		if err != nil {
			return "", err
		}
		defer f.Close()
		names, err := f.Readdirnames(-1)
		sort.Strings(names)
		return "[" + strings.Join(names, " ") + "]", err
	}}
}

func renameFlags(flags uint) string {
	switch flags {
	case 0:
		return ""
	case unix.RENAME_NOREPLACE:
		return " RENAME_NOREPLACE"
	case unix.RENAME_EXCHANGE:
		return " RENAME_EXCHANGE"
	}
	return fmt.Sprintf(" flags=%#x", flags)
}

func opRename(from, to string, flags uint) step {
	return step{name: "rename " + from + " " + to + renameFlags(flags), do: func(r string) (string, error) {
		return "", unix.Renameat2(unix.AT_FDCWD, join(r, from), unix.AT_FDCWD, join(r, to), flags)
	}}
}

func opLink(from, to string) step {
	return step{name: "link " + from + " " + to, do: func(r string) (string, error) {
		return "", unix.Link(join(r, from), join(r, to))
	}}
}

func opSymlink(target, rel string) step {
	return step{name: "symlink " + rel + " -> " + target, do: func(r string) (string, error) {
		return "", unix.Symlink(target, join(r, rel))
	}}
}

func opMknod(rel string, mode uint32, major, minor uint32) step {
	return step{name: fmt.Sprintf("mknod %s %#o %d:%d", rel, mode, major, minor), do: func(r string) (string, error) {
		return "", unix.Mknod(join(r, rel), mode, int(unix.Mkdev(major, minor)))
	}}
}

func opChmod(rel string, mode uint32) step {
	return step{name: fmt.Sprintf("chmod %s %#o", rel, mode), do: func(r string) (string, error) {
		return "", unix.Chmod(join(r, rel), mode)
	}}
}

func opLchown(rel string, uid, gid int) step {
	return step{name: fmt.Sprintf("lchown %s %d:%d", rel, uid, gid), do: func(r string) (string, error) {
		return "", unix.Lchown(join(r, rel), uid, gid)
	}}
}

func opTruncate(rel string, size int64) step {
	return step{name: fmt.Sprintf("truncate %s %d", rel, size), do: func(r string) (string, error) {
		return "", unix.Truncate(join(r, rel), size)
	}}
}

// opUtimes sets atime and mtime of rel (not following a symlink).
func opUtimes(rel string, t time.Time) step {
	return step{name: "utimensat " + rel + " " + t.Format(time.RFC3339Nano), do: func(r string) (string, error) {
		ts := unix.NsecToTimespec(t.UnixNano())
		return "", unix.UtimesNanoAt(unix.AT_FDCWD, join(r, rel), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	}}
}

func opSetxattr(rel, k, v string) step {
	return step{name: fmt.Sprintf("lsetxattr %s %s=%q", rel, k, v), do: func(r string) (string, error) {
		return "", unix.Lsetxattr(join(r, rel), k, []byte(v), 0)
	}}
}

func opRemovexattr(rel, k string) step {
	return step{name: "lremovexattr " + rel + " " + k, do: func(r string) (string, error) {
		return "", unix.Lremovexattr(join(r, rel), k)
	}}
}

func opGetxattr(rel, k string) step {
	return step{name: "lgetxattr " + rel + " " + k, do: func(r string) (string, error) {
		v, err := getXattr(join(r, rel), k)
		return fmt.Sprintf("%q", v), err
	}}
}

func opListxattr(rel string) step {
	return step{name: "llistxattr " + rel, do: func(r string) (string, error) {
		m, err := listXattrs(join(r, rel))
		return fmtXattrs(m, ""), err
	}}
}

// opReadBeforeCopyUp opens rel read-only, then writes data through a second
// (writable, so copying-up) open, and reads through the first fd again:
// read() on an fd opened before the copy-up must see the new data.
func opReadBeforeCopyUp(rel, data string) step {
	return step{name: fmt.Sprintf("open %s O_RDONLY, then write %q through another fd, read the first fd", rel, data), passthroughStale: true, do: func(r string) (string, error) {
		ro, err := unix.Open(join(r, rel), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return "open ro", err
		}
		defer unix.Close(ro)
		wr, err := unix.Open(join(r, rel), unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return "open wr", err
		}
		_, err = unix.Pwrite(wr, []byte(data), 0)
		unix.Close(wr)
		if err != nil {
			return "write", err
		}
		buf := make([]byte, 4096)
		n, err := unix.Pread(ro, buf, 0)
		return fmt.Sprintf("old fd reads %q", buf[:max(n, 0)]), err
	}}
}

// opInoStable runs s on rel and says whether st_ino stayed the same.
func opInoStable(rel string, s step) step {
	return step{name: s.name + ", st_ino kept?", do: func(r string) (string, error) {
		var a, b unix.Stat_t
		if err := unix.Lstat(join(r, rel), &a); err != nil {
			return "", err
		}
		out, err := s.do(r)
		if err != nil {
			return out, err
		}
		if err := unix.Lstat(join(r, rel), &b); err != nil {
			return "", err
		}
		if a.Ino == b.Ino {
			return "st_ino kept", nil
		}
		return "st_ino changed", nil
	}}
}

// opSameIno says whether two names show the same st_ino (hard links).
func opSameIno(a, b string) step {
	return step{name: "st_ino of " + a + " == st_ino of " + b + "?", do: func(r string) (string, error) {
		var sa, sb unix.Stat_t
		if err := unix.Lstat(join(r, a), &sa); err != nil {
			return "", err
		}
		if err := unix.Lstat(join(r, b), &sb); err != nil {
			return "", err
		}
		return fmt.Sprintf("same=%v", sa.Ino == sb.Ino), nil
	}}
}

// opCreateInRoot creates rel with openat2(RESOLVE_IN_ROOT) from the root:
// symlinks, absolute ones too, resolve inside the mount, as a container
// runtime resolves paths in a rootfs.
func opCreateInRoot(rel string) step {
	return step{name: "openat2 RESOLVE_IN_ROOT O_CREAT " + rel, do: func(r string) (string, error) {
		dfd, err := unix.Open(r, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", err
		}
		defer unix.Close(dfd)
		fd, err := unix.Openat2(dfd, rel, &unix.OpenHow{
			Flags:   unix.O_CREAT | unix.O_WRONLY | unix.O_CLOEXEC,
			Mode:    0o644,
			Resolve: unix.RESOLVE_IN_ROOT,
		})
		if err != nil {
			return "", err
		}
		unix.Close(fd)
		return "", nil
	}}
}

// seekMap lists the data extents of fd as SEEK_DATA/SEEK_HOLE report them.
func seekMap(fd int, size int64) (string, error) {
	var parts []string
	for off := int64(0); off < size; {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return "", err
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return "", err
		}
		parts = append(parts, fmt.Sprintf("data[%d,%d)", d, h))
		off = h
	}
	return strings.Join(parts, " "), nil
}

// opSeekMap is SEEK_DATA/SEEK_HOLE through the mount.
func opSeekMap(rel string) step {
	return step{name: "SEEK_DATA/SEEK_HOLE map of " + rel, do: func(r string) (string, error) {
		fd, err := unix.Open(join(r, rel), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", err
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return "", err
		}
		return seekMap(fd, st.Size)
	}}
}

// fdStep opens rel with flags and runs fn on the fd.
func fdStep(name, rel string, flags int, fn func(r string, fd int) (string, error)) step {
	return step{name: name, do: func(r string) (string, error) {
		fd, err := unix.Open(join(r, rel), flags|unix.O_CLOEXEC, 0o640)
		if err != nil {
			return "open", err
		}
		defer unix.Close(fd)
		return fn(r, fd)
	}}
}

func fstatShort(fd int) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "fstat", err
	}
	return fmt.Sprintf("fstat %s %#o %d:%d size=%d nlink=%d", fileType(st.Mode, st.Rdev), st.Mode&07777, st.Uid, st.Gid, st.Size, st.Nlink), nil
}

func preadAll(fd int) (string, error) {
	buf := make([]byte, 1<<16)
	n, err := unix.Pread(fd, buf, 0)
	return fmt.Sprintf("%q", buf[:max(n, 0)]), err
}

// opFdUnlinkRead: a file opened read-only stays readable after unlink.
func opFdUnlinkRead(rel string) step {
	return fdStep("open "+rel+" O_RDONLY, unlink it, read and fstat the fd", rel, unix.O_RDONLY, func(r string, fd int) (string, error) {
		if err := unix.Unlink(join(r, rel)); err != nil {
			return "unlink", err
		}
		d, err := preadAll(fd)
		if err != nil {
			return "read", err
		}
		s, err := fstatShort(fd)
		return d + " " + s, err
	})
}

// opFdUnlinkWrite: a copied-up file written after its name is gone.
func opFdUnlinkWrite(rel string) step {
	return fdStep("open "+rel+" O_RDWR, unlink it, write, read and fstat the fd", rel, unix.O_RDWR, func(r string, fd int) (string, error) {
		if err := unix.Unlink(join(r, rel)); err != nil {
			return "unlink", err
		}
		return writeReadStat(fd, "W")
	})
}

// opFdRenameWrite: writes through an fd land in the file under its new name.
func opFdRenameWrite(rel, to string) step {
	return fdStep("open "+rel+" O_RDWR, rename it to "+to+", write the fd, read "+to, rel, unix.O_RDWR, func(r string, fd int) (string, error) {
		if err := unix.Rename(join(r, rel), join(r, to)); err != nil {
			return "rename", err
		}
		if _, err := unix.Pwrite(fd, []byte("R"), 0); err != nil {
			return "write", err
		}
		b, err := os.ReadFile(join(r, to))
		return fmt.Sprintf("%q", b), err
	})
}

// opFchmodRO: fchmod on an fd opened read-only before the copy-up.
func opFchmodRO(rel string, mode uint32) step {
	return fdStep(fmt.Sprintf("open %s O_RDONLY, fchmod %#o, fstat", rel, mode), rel, unix.O_RDONLY, func(r string, fd int) (string, error) {
		if err := unix.Fchmod(fd, mode); err != nil {
			return "fchmod", err
		}
		return fstatShort(fd)
	})
}

// opFchownRO: fchown on an fd opened read-only.
func opFchownRO(rel string, uid, gid int) step {
	return fdStep(fmt.Sprintf("open %s O_RDONLY, fchown %d:%d, fstat", rel, uid, gid), rel, unix.O_RDONLY, func(r string, fd int) (string, error) {
		if err := unix.Fchown(fd, uid, gid); err != nil {
			return "fchown", err
		}
		return fstatShort(fd)
	})
}

// opFsetxattrRO: fsetxattr on an fd opened read-only, then fgetxattr.
func opFsetxattrRO(rel, k, v string) step {
	return fdStep(fmt.Sprintf("open %s O_RDONLY, fsetxattr %s=%q, fgetxattr", rel, k, v), rel, unix.O_RDONLY, func(r string, fd int) (string, error) {
		if err := unix.Fsetxattr(fd, k, []byte(v), 0); err != nil {
			return "fsetxattr", err
		}
		buf := make([]byte, 256)
		n, err := unix.Fgetxattr(fd, k, buf)
		return fmt.Sprintf("%q", buf[:max(n, 0)]), err
	})
}

func opFtruncate(rel string, size int64) step {
	return fdStep(fmt.Sprintf("open %s O_RDWR, ftruncate %d, fstat", rel, size), rel, unix.O_RDWR, func(r string, fd int) (string, error) {
		if err := unix.Ftruncate(fd, size); err != nil {
			return "ftruncate", err
		}
		return fstatShort(fd)
	})
}

// opTwoAppenders: two O_APPEND fds on one (lower) file, writing in turn.
func opTwoAppenders(rel string) step {
	return step{name: "two O_WRONLY|O_APPEND fds on " + rel + " write in turn", do: func(r string) (string, error) {
		var fds [2]int
		for i := range fds {
			fd, err := unix.Open(join(r, rel), unix.O_WRONLY|unix.O_APPEND|unix.O_CLOEXEC, 0)
			if err != nil {
				return "open", err
			}
			defer unix.Close(fd)
			fds[i] = fd
		}
		for i, s := range []string{"1", "2", "3", "4"} {
			if _, err := unix.Write(fds[i%2], []byte(s)); err != nil {
				return "write", err
			}
		}
		b, err := os.ReadFile(join(r, rel))
		return fmt.Sprintf("%q", b), err
	}}
}

func getdentsNames(fd int) ([]string, error) {
	var names []string
	buf := make([]byte, 1024) // small: several getdents calls per dir
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return names, err
		}
		if n <= 0 {
			break
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
	sort.Strings(names)
	return names, nil
}

// opRewindDir: an open directory fd, rewound after a create, lists the
// new name.
func opRewindDir(dir, create string) step {
	return fdStep("open dir "+dir+", getdents, create "+create+", rewind, getdents", dir, unix.O_RDONLY|unix.O_DIRECTORY, func(r string, fd int) (string, error) {
		before, err := getdentsNames(fd)
		if err != nil {
			return "getdents", err
		}
		if err := os.WriteFile(join(r, create), nil, 0o644); err != nil {
			return "create", err
		}
		if _, err := unix.Seek(fd, 0, unix.SEEK_SET); err != nil {
			return "lseek", err
		}
		after, err := getdentsNames(fd)
		return fmt.Sprintf("%d names, then %d: %s", len(before), len(after), strings.Join(after, " ")), err
	})
}

// opGetdents lists dir with a small getdents buffer, so a big merged
// directory is read in many calls and the offsets must hold.
func opGetdents(dir string) step {
	return fdStep("getdents (1 KiB buffer) "+dir, dir, unix.O_RDONLY|unix.O_DIRECTORY, func(r string, fd int) (string, error) {
		names, err := getdentsNames(fd)
		return fmt.Sprintf("%d names: %s", len(names), strings.Join(names, " ")), err
	})
}

// fsNodumpFl is FS_NODUMP_FL of linux/fs.h (not in x/sys/unix).
const fsNodumpFl = 0x40

// opChattr sets FS_NODUMP_FL (harmless, unlike immutable) with
// FS_IOC_SETFLAGS and reads the flags back.
func opChattr(rel string) step {
	return fdStep("chattr +d "+rel+" (FS_IOC_SETFLAGS), lsattr", rel, unix.O_RDONLY, func(r string, fd int) (string, error) {
		fl, err := unix.IoctlGetInt(fd, unix.FS_IOC_GETFLAGS)
		if err != nil {
			return "FS_IOC_GETFLAGS", err
		}
		if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, fl|fsNodumpFl); err != nil {
			return "FS_IOC_SETFLAGS", err
		}
		fl, err = unix.IoctlGetInt(fd, unix.FS_IOC_GETFLAGS)
		return fmt.Sprintf("nodump=%v", fl&fsNodumpFl != 0), err
	})
}

// opSetxattrFlags is lsetxattr with XATTR_CREATE/XATTR_REPLACE and a value
// of n bytes.
func opSetxattrFlags(rel, k string, n int, flags int) step {
	fl := map[int]string{0: "", unix.XATTR_CREATE: " XATTR_CREATE", unix.XATTR_REPLACE: " XATTR_REPLACE"}[flags]
	return step{name: fmt.Sprintf("lsetxattr %s %s=<%d bytes>%s", rel, k, n, fl), do: func(r string) (string, error) {
		return "", unix.Lsetxattr(join(r, rel), k, []byte(strings.Repeat("v", n)), flags)
	}}
}

// opTimes runs s on rel and says whether it changed rel's mtime and ctime.
func opTimes(rel string, s step) step {
	return step{name: s.name + ", mtime/ctime of " + rel + " changed?", do: func(r string) (string, error) {
		var a, b unix.Stat_t
		if err := unix.Lstat(join(r, rel), &a); err != nil {
			return "", err
		}
		time.Sleep(5 * time.Millisecond) // past the timestamp granularity
		out, err := s.do(r)
		if err != nil {
			return out, err
		}
		if err := unix.Lstat(join(r, rel), &b); err != nil {
			return "", err
		}
		return fmt.Sprintf("mtime changed=%v ctime changed=%v", a.Mtim != b.Mtim, a.Ctim != b.Ctim), nil
	}}
}

// opCopyFileRange copies src (a lower file) into a new file dst with
// copy_file_range(2).
func opCopyFileRange(src, dst string) step {
	return step{name: "copy_file_range " + src + " -> new " + dst, do: func(r string) (string, error) {
		in, err := unix.Open(join(r, src), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return "open src", err
		}
		defer unix.Close(in)
		out, err := unix.Open(join(r, dst), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return "open dst", err
		}
		defer unix.Close(out)
		n, err := unix.CopyFileRange(in, nil, out, nil, 1<<20, 0)
		if err != nil {
			return "copy_file_range", err
		}
		b, err := os.ReadFile(join(r, dst))
		return fmt.Sprintf("%d bytes: %q", n, b), err
	}}
}

// opFallocate extends rel to size with fallocate(2) through an O_RDWR fd.
func opFallocate(rel string, size int64) step {
	return fdStep(fmt.Sprintf("open %s O_RDWR, fallocate 0..%d", rel, size), rel, unix.O_RDWR, func(r string, fd int) (string, error) {
		if err := unix.Fallocate(fd, 0, 0, size); err != nil {
			return "fallocate", err
		}
		return fstatShort(fd)
	})
}

// opMmapWrite writes data at offset 0 of rel through a MAP_SHARED mapping
// of an O_RDWR fd, then reads the file by path. The write must land in
// the upper copy, never in the lower file.
func opMmapWrite(rel, data string) step {
	return fdStep(fmt.Sprintf("open %s O_RDWR, mmap MAP_SHARED, write %q, msync, read", rel, data), rel, unix.O_RDWR, func(r string, fd int) (string, error) {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return "fstat", err
		}
		m, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return "mmap", err
		}
		copy(m, data)
		err = unix.Msync(m, unix.MS_SYNC)
		if uerr := unix.Munmap(m); err == nil {
			err = uerr
		}
		if err != nil {
			return "msync", err
		}
		b, err := os.ReadFile(join(r, rel))
		return fmt.Sprintf("%q", b), err
	})
}

// asUser runs s as uid:gid without privileges: fsuid/fsgid, no
// supplementary groups and an empty effective capability set, on a thread
// of its own. The goroutine never unlocks it, so the thread exits with it
// and no other code inherits the credentials. (euid stays 0, so the FUSE
// mount, made without allow_other, still admits the caller.)
func asUser(uid, gid int, s step) step {
	return step{name: fmt.Sprintf("as %d:%d %s", uid, gid, s.name), do: func(r string) (string, error) {
		type result struct {
			out string
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			if err := dropToUser(uid, gid); err != nil {
				ch <- result{"dropping privileges", err}
				return
			}
			out, err := s.do(r)
			ch <- result{out, err}
		}()
		res := <-ch
		return res.out, res.err
	}}
}

func dropToUser(uid, gid int) error {
	if err := unix.Setgroups(nil); err != nil {
		return err
	}
	if err := unix.Setfsgid(gid); err != nil {
		return err
	}
	if err := unix.Setfsuid(uid); err != nil {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	data[0].Effective, data[1].Effective = 0, 0
	return unix.Capset(&hdr, &data[0])
}

// opConcurrentWrites: n goroutines open rel O_WRONLY at once (each
// racing to copy it up) and each writes its own byte at its own offset;
// the result is the same whatever the order.
func opConcurrentWrites(rel string, n int) step {
	return step{name: fmt.Sprintf("%d goroutines open %s O_WRONLY at once, each pwrites one byte", n, rel), do: func(r string) (string, error) {
		errs := make(chan error, n)
		start := make(chan struct{})
		for i := 0; i < n; i++ {
			go func() {
				<-start
				fd, err := unix.Open(join(r, rel), unix.O_WRONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					errs <- err
					return
				}
				_, err = unix.Pwrite(fd, []byte{byte('A' + i)}, int64(i))
				unix.Close(fd)
				errs <- err
			}()
		}
		close(start)
		var first error
		for i := 0; i < n; i++ {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		if first != nil {
			return "", first
		}
		b, err := os.ReadFile(join(r, rel))
		return fmt.Sprintf("%q", b), err
	}}
}

// opConcurrent runs steps at once and reports each outcome in order.
func opConcurrent(name string, steps ...step) step {
	return step{name: name, do: func(r string) (string, error) {
		outs := make([]string, len(steps))
		done := make(chan struct{})
		start := make(chan struct{})
		for i, s := range steps {
			go func() {
				<-start
				outs[i] = outcome(s.do(r))
				done <- struct{}{}
			}()
		}
		close(start)
		for range steps {
			<-done
		}
		return strings.Join(outs, "; "), nil
	}}
}

// opTmpfile makes an unnamed file in dir with O_TMPFILE, writes and reads
// it back through the fd.
func opTmpfile(dir string) step {
	return fdStep("open "+dir+" O_TMPFILE|O_RDWR, write, read, fstat", dir, unix.O_TMPFILE|unix.O_RDWR, func(r string, fd int) (string, error) {
		return writeReadStat(fd, "tmp")
	})
}

// opWhileOpenRO runs s while rel is held open read-only and mapped
// MAP_SHARED, then reads through that fd. With FUSE passthrough the held
// fd pins the lower file as the node's backing file (design.md §4): s
// must still write only the upper copy (each scenario checks the lower
// layers afterwards). What the old fd reads may be stale under
// passthrough in the default consistency mode.
func opWhileOpenRO(rel string, s step) step {
	return step{name: "with " + rel + " open O_RDONLY and mmapped: " + s.name, passthroughStale: true, do: func(r string) (string, error) {
		fd, err := unix.Open(join(r, rel), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return "open ro", err
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return "fstat", err
		}
		m, err := unix.Mmap(fd, 0, int(max(st.Size, 1)), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return "mmap", err
		}
		defer unix.Munmap(m)
		out, err := s.do(r)
		if err != nil {
			return out, err
		}
		d, err := preadAll(fd)
		if out != "" {
			out += "; "
		}
		return out + "old fd reads " + d, err
	}}
}

// opStatfs reports what statfs says that matters to programs: the name
// length limit and whether there is room.
func opStatfs() step {
	return step{name: "statfs .", do: func(r string) (string, error) {
		var st unix.Statfs_t
		if err := unix.Statfs(r, &st); err != nil {
			return "", err
		}
		return fmt.Sprintf("namelen=%d blocks>0=%v bfree>0=%v files>0=%v", st.Namelen, st.Blocks > 0, st.Bfree > 0, st.Files > 0), nil
	}}
}

// opAccess is faccessat(2) with AT_EACCESS (the caller's fsuid).
func opAccess(rel string, mode uint32) step {
	return step{name: fmt.Sprintf("faccessat %s %#o", rel, mode), do: func(r string) (string, error) {
		return "", unix.Faccessat(unix.AT_FDCWD, join(r, rel), mode, unix.AT_EACCESS)
	}}
}

// opTouchNow sets atime and mtime to now (UTIME_NOW), which write
// permission alone allows.
func opTouchNow(rel string) step {
	return step{name: "utimensat " + rel + " UTIME_NOW", do: func(r string) (string, error) {
		now := unix.Timespec{Nsec: unix.UTIME_NOW}
		return "", unix.UtimesNanoAt(unix.AT_FDCWD, join(r, rel), []unix.Timespec{now, now}, 0)
	}}
}

// opShellAs runs a shell command in the root as a real unprivileged
// process (setpriv: uid, gid, no groups, no capabilities), as a
// container's processes reach the mount (through allow_other on FUSE).
// The result is the exit status and the output.
func opShellAs(uid, gid int, script string) step {
	return step{name: fmt.Sprintf("as process %d:%d sh -c %q", uid, gid, script), do: func(r string) (string, error) {
		cmd := exec.Command("setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", gid),
			"--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "sh", "-c", script)
		cmd.Dir = r
		cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
		out, err := cmd.CombinedOutput()
		code := 0
		if err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				return "", err
			}
			code = ee.ExitCode()
		}
		return fmt.Sprintf("exit %d: %q", code, out), nil
	}}
}

// writeReadStat writes data at 0 through fd, then reports what reading it
// back and fstat show.
func writeReadStat(fd int, data string) (string, error) {
	if _, err := unix.Pwrite(fd, []byte(data), 0); err != nil {
		return "write", err
	}
	d, err := preadAll(fd)
	if err != nil {
		return "read", err
	}
	s, err := fstatShort(fd)
	return d + " " + s, err
}
