package overlayfuse

import (
	"context"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// copyUp gives n an upper object, copying up its parents first. It
// returns at once for a node that has one.
func (n *node) copyUp(ctx context.Context) syscall.Errno {
	if n.ofs.readOnly() {
		return syscall.EROFS
	}
	if n.hasUpper() {
		return 0
	}
	n.ofs.copyMu.Lock()
	defer n.ofs.copyMu.Unlock()
	return n.copyUpLocked()
}

// parentNode is a name and directory of n; for a hard link, any of them.
func (n *node) parentNode() (string, *node) {
	name, p := n.Parent()
	if p == nil {
		return "", nil
	}
	pn, _ := p.Operations().(*node)
	return name, pn
}

// copyUpLocked is copyUp with ofs.copyMu held.
func (n *node) copyUpLocked() syscall.Errno {
	if n.hasUpper() {
		return 0
	}
	name, parent := n.parentNode()
	if parent == nil {
		return syscall.ESTALE
	}
	if errno := parent.copyUpLocked(); errno != 0 {
		return errno
	}
	n.mu.Lock()
	if len(n.lowers) == 0 {
		n.mu.Unlock()
		return syscall.ESTALE
	}
	src := n.lowers[0]
	n.mu.Unlock()
	dstDir, dstDone, err := parent.upperDirFd()
	if err != nil {
		return n.ofs.toErrno(err)
	}
	defer dstDone()
	up, errno := n.ofs.copyUpObject(src, dstDir, name)
	if errno == syscall.EEXIST {
		// The name went (a whiteout) or shows another file now: the
		// kernel looked n up before that, and n has no name to copy to.
		return syscall.ENOENT
	}
	if errno != 0 {
		return errno
	}
	n.setUpper(up)
	n.linkUpAliases(parent, name)
	return 0
}

// setUpper records a fresh upper object of n. A non-directory stops
// looking at its lower object; a directory keeps merging its lowers.
func (n *node) setUpper(up realRef) {
	n.fds.add(up)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.upper = up
	n.xattrs, n.xattrsKnown = nil, false
	if !n.isDir() {
		n.lowers = nil
		if n.lowerNlink > 0 {
			n.lowerMoved++
		}
	}
}

// linkUpAliases links every other known name of a copied-up lower hard
// link to the new upper file, so all names keep showing one file.
func (n *node) linkUpAliases(done *node, doneName string) {
	n.mu.Lock()
	aliases := append([]alias(nil), n.aliases...)
	n.mu.Unlock()
	for _, a := range aliases {
		if a.parent == done && a.name == doneName {
			continue
		}
		if a.parent.GetChild(a.name) != n.EmbeddedInode() {
			continue
		}
		// The copy-up itself is done; this name keeps showing the lower
		// file until its next lookup links it up.
		if errno := n.linkUpLocked(a.parent, a.name); errno != 0 {
			n.ofs.opts.Logger.Printf("overlayfuse: link-up of %s after its copy-up: %v", a.name, errno)
		}
	}
}

// linkUp links name in parent to n's upper file when that name of a lower
// hard link is still lower-only.
func (n *node) linkUp(parent *node, name string) syscall.Errno {
	n.mu.Lock()
	need := n.upper.valid() && n.lowerNlink > 0
	n.mu.Unlock()
	if !need {
		return 0
	}
	n.ofs.copyMu.Lock()
	defer n.ofs.copyMu.Unlock()
	return n.linkUpLocked(parent, name)
}

func (n *node) linkUpLocked(parent *node, name string) syscall.Errno {
	if errno := parent.copyUpLocked(); errno != 0 {
		return errno
	}
	pfd, done, err := parent.upperDirFd()
	if err != nil {
		return n.ofs.toErrno(err)
	}
	defer done()
	var st unix.Stat_t
	if err := lstatAt(pfd, name, &st); err == nil {
		return 0 // already there
	}
	var pst unix.Stat_t
	if err := fstat(pfd, &pst); err != nil {
		return n.ofs.toErrno(err)
	}
	if err := linkRef(n.upperRef(), pfd, name); err != nil {
		return n.ofs.toErrno(err)
	}
	keepTimes(pfd, &pst)
	n.mu.Lock()
	n.lowerMoved++
	n.mu.Unlock()
	return 0
}

// copyUpObject copies the lower object src to name in the upper directory
// dstDir: it is built in the work dir, with data, owner, mode, xattrs and
// times, then renamed into place, so a crash never shows half a copy. It
// returns a ref of the new object.
func (ofs *overlayFS) copyUpObject(srcRef realRef, dstDir int, name string) (realRef, syscall.Errno) {
	start := time.Now()
	src, done, err := srcRef.pathFd()
	if err != nil {
		return noRef, ofs.toErrno(err)
	}
	defer done()
	var st unix.Stat_t
	if err := fstat(src, &st); err != nil {
		return noRef, ofs.toErrno(err)
	}
	if errno := ofs.ids.hostStat(&st); errno != 0 {
		return noRef, errno
	}
	tmp := ofs.tmpName()
	work := ofs.workFd
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	fd, origin, errno := ofs.buildCopy(src, originOf(srcRef), &st, tmp)
	if errno != 0 {
		// Best effort: the next mount empties the work dir.
		_ = removeAt(work, tmp, isDir)
		return noRef, errno
	}
	// As the kernel, a copy-up leaves the parent's times as they were:
	// the merged directory did not change.
	var pst unix.Stat_t
	if err = fstat(dstDir, &pst); err == nil {
		err = ofs.renameBuilt(fd, tmp, dstDir, name, unix.RENAME_NOREPLACE)
	}
	var ref realRef
	if err == nil {
		ref, err = refOfFd(ofs.upper, fd, isDir)
	} else {
		unix.Close(fd)
	}
	if err != nil {
		// Best effort: the next mount empties the work dir.
		_ = removeAt(work, tmp, isDir)
		return noRef, ofs.toErrno(err)
	}
	if origin {
		setImpure(dstDir)
	}
	keepTimes(dstDir, &pst)
	if m := ofs.opts.Metrics; m != nil {
		var n int64
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			n = st.Size
		}
		m.CopyUp(n, time.Since(start))
	}
	return ref, 0
}

// refOfFd makes a realRef of the object fd refers to, and takes fd: a
// directory's (an O_PATH fd) goes to the ref, any other is closed.
func refOfFd(l *layer, fd int, isDir bool) (realRef, error) {
	if isDir {
		return dirRef(l, fd)
	}
	defer unix.Close(fd)
	fh, _, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		return noRef, err
	}
	return realRef{layer: l, fd: -1, fh: fh}, nil
}

// buildCopy makes tmp in the work dir a copy of src and returns an fd of
// it (O_PATH but for a regular file) and whether it got its origin. All
// but its creation goes through that fd.
func (ofs *overlayFS) buildCopy(src int, origin []byte, st *unix.Stat_t, tmp string) (fd int, hasOrigin bool, errno syscall.Errno) {
	fd, errno = ofs.makeCopy(src, st, tmp)
	if errno != 0 {
		return -1, false, errno
	}
	if hasOrigin, errno = setCopyAttrs(fd, fdXpath(src), origin, st); errno == 0 {
		errno = copyFileattr(src, st, fd)
	}
	if errno != 0 {
		unix.Close(fd)
		return -1, false, errno
	}
	return fd, hasOrigin, 0
}

// makeCopy creates tmp in the work dir as src's type, with its data, and
// returns an fd of it.
func (ofs *overlayFS) makeCopy(src int, st *unix.Stat_t, tmp string) (int, syscall.Errno) {
	work := ofs.workFd
	mode := st.Mode & unix.S_IFMT
	var err error
	switch mode {
	case unix.S_IFREG:
		in, err := reopen(src, unix.O_RDONLY|unix.O_NOATIME)
		if err == unix.EPERM {
			in, err = reopen(src, unix.O_RDONLY)
		}
		if err != nil {
			return -1, ofs.toErrno(err)
		}
		defer unix.Close(in)
		out, err := unix.Openat(work, tmp, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return -1, ofs.toErrno(err)
		}
		if err := copyData(in, out, st.Size); err != nil {
			unix.Close(out)
			return -1, ofs.toErrno(err)
		}
		// As kernel overlayfs (fsync=auto): the data is on disk before the
		// rename makes the copy visible, so a crash shows the lower file or
		// the whole copy, never a part.
		if err := ofs.fdatasync(out); err != nil {
			unix.Close(out)
			return -1, ofs.toErrno(err)
		}
		return out, 0
	case unix.S_IFDIR:
		err = unix.Mkdirat(work, tmp, 0o700)
	case unix.S_IFLNK:
		target := make([]byte, st.Size+1)
		sz, rerr := unix.Readlinkat(src, "", target)
		if rerr != nil {
			return -1, ofs.toErrno(rerr)
		}
		err = unix.Symlinkat(string(target[:sz]), work, tmp)
	default:
		err = unix.Mknodat(work, tmp, st.Mode, int(st.Rdev))
	}
	if err != nil {
		return -1, ofs.toErrno(err)
	}
	fd, err := openBuilt(work, tmp, mode, st.Rdev)
	return fd, ofs.toErrno(err)
}

// setCopyAttrs gives the copy fd src's owner, mode, xattrs, origin and
// times, and reports whether the origin was recorded.
func setCopyAttrs(fd int, srcX xpath, origin []byte, st *unix.Stat_t) (bool, syscall.Errno) {
	if err := chownFd(fd, int(st.Uid), int(st.Gid)); err != nil {
		return false, toErrno(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		// After chown, which clears set-id bits.
		if err := chmodFd(fd, st.Mode); err != nil {
			return false, toErrno(err)
		}
	}
	// The /proc name of an O_PATH fd of a symlink leads to the symlink
	// itself for the following (not the l*) xattr calls.
	dst := fdXpath(fd)
	if errno := copyXattrs(srcX, dst); errno != 0 {
		return false, errno
	}
	// Best effort, as in the kernel: without it st_ino changes at the
	// next lookup after the kernel forgets the inode.
	hasOrigin := origin != nil && dst.set(originXattr, origin, 0) == nil
	ts := []unix.Timespec{st.Atim, st.Mtim}
	return hasOrigin, toErrno(unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW))
}

// copyXattrs copies every attribute of src but the private ones to dst.
func copyXattrs(src, dst xpath) syscall.Errno {
	names, err := src.listAll()
	if err != nil {
		if err == unix.ENOTSUP {
			return 0
		}
		return toErrno(err)
	}
	for _, attr := range names {
		if isPrivateXattr(attr) {
			continue
		}
		val, err := src.getAll(attr)
		if err == unix.ENODATA {
			continue
		}
		if err != nil {
			return toErrno(err)
		}
		if err := dst.set(attr, val, 0); err != nil && err != unix.ENOTSUP {
			return toErrno(err)
		}
	}
	return 0
}

// copyData copies size bytes from in to out inside the kernel: a reflink
// where the filesystem has them, otherwise copy_file_range over the data
// extents only, so holes stay holes.
func copyData(in, out int, size int64) error {
	if size == 0 {
		return nil
	}
	if unix.IoctlFileClone(out, in) == nil {
		return nil
	}
	for off := int64(0); off < size; {
		data, err := unix.Seek(in, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // the rest is a hole
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(in, data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if err := copyRange(in, out, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return unix.Ftruncate(out, size)
}

func copyRange(in, out int, off, n int64) error {
	roff, woff := off, off
	for n > 0 {
		c, err := unix.CopyFileRange(in, &roff, out, &woff, int(min(n, 1<<30)), 0)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EXDEV || err == unix.ENOSYS || err == unix.EOPNOTSUPP || err == unix.EINVAL {
			return sendRange(in, out, roff, woff, n)
		}
		if err != nil {
			return err
		}
		if c == 0 {
			return nil // the file shrank under us
		}
		n -= int64(c)
	}
	return nil
}

// sendRange is copyRange for filesystem pairs copy_file_range refuses.
func sendRange(in, out int, roff, woff, n int64) error {
	if _, err := unix.Seek(out, woff, 0); err != nil {
		return err
	}
	for n > 0 {
		c, err := unix.Sendfile(out, in, &roff, int(min(n, 1<<30)))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if c == 0 {
			return nil
		}
		n -= int64(c)
	}
	return nil
}

// linkRef makes name in dirfd a hard link of r.
func linkRef(r realRef, dirfd int, name string) error {
	fd, done, err := r.pathFd()
	if err != nil {
		return err
	}
	defer done()
	return unix.Linkat(fd, "", dirfd, name, unix.AT_EMPTY_PATH)
}

// keepTimes puts back the times of directory fd that st had: a copy-up
// or link-up adds an entry that the merged directory showed already.
func keepTimes(fd int, st *unix.Stat_t) {
	// Best effort, as the kernel's: times are not worth failing for.
	_ = unix.UtimesNanoAt(fd, "", []unix.Timespec{st.Atim, st.Mtim}, unix.AT_EMPTY_PATH)
}
