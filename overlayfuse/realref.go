package overlayfuse

import (
	"bytes"

	"golang.org/x/sys/unix"
)

// realRef names a node's real object in one layer by a file handle, and
// is opened when used, so a mount holds no fd per file or directory
// (RLIMIT_NOFILE can be low and unraisable). A directory's O_PATH fd,
// which every lookup and listing in it uses, is kept in the bounded
// dirFds cache (fdcache.go). Layer roots, and directories of a layer
// without file handles, keep an fd instead.
type realRef struct {
	layer *layer
	fd    int       // O_PATH fd kept for the ref's life; -1 otherwise
	dir   *cachedFd // directories: the fd cache entry
	fh    unix.FileHandle
}

var noRef = realRef{fd: -1}

func (r realRef) valid() bool { return r.layer != nil }

// refAt makes a realRef of name in dirfd, which the caller has just
// lstat'ed as st. Neither call follows a symlink.
func refAt(l *layer, dirfd int, name string, st *unix.Stat_t) (realRef, error) {
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		fd, err := dirFds.retry(func() (int, error) { return openPath(dirfd, name) })
		if err != nil {
			return noRef, err
		}
		return dirRef(l, fd)
	}
	fh, _, err := unix.NameToHandleAt(dirfd, name, 0)
	if err != nil {
		return noRef, err
	}
	return realRef{layer: l, fd: -1, fh: fh}, nil
}

// dirRef makes a realRef of the directory O_PATH fd refers to, and takes
// fd: into the fd cache, or kept for the ref's life where no handle can
// reopen it. On error fd is closed.
func dirRef(l *layer, fd int) (realRef, error) {
	if !l.handles {
		return realRef{layer: l, fd: fd}, nil
	}
	// The handle of what was opened, not of what the name is now.
	fh, mnt, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		unix.Close(fd)
		return noRef, err
	}
	if mnt != l.mountID {
		// A mount inside the layer: the layer's mount cannot
		// decode the handle.
		return realRef{layer: l, fd: fd}, nil
	}
	return realRef{layer: l, fd: -1, fh: fh, dir: dirFds.add(l, fh, fd)}, nil
}

func nop() {}

// pathFd returns an O_PATH fd of r and the function that releases it.
func (r realRef) pathFd() (int, func(), error) {
	if r.fd >= 0 {
		return r.fd, nop, nil
	}
	if r.dir != nil {
		return r.dir.acquire()
	}
	fd, err := r.open(unix.O_PATH)
	if err != nil {
		return -1, nil, err
	}
	return fd, func() { unix.Close(fd) }, nil
}

// open opens r with flags; the caller owns the fd.
func (r realRef) open(flags int) (int, error) {
	if r.fd >= 0 {
		if flags&unix.O_PATH != 0 {
			return unix.FcntlInt(uintptr(r.fd), unix.F_DUPFD_CLOEXEC, 0)
		}
		return reopen(r.fd, flags)
	}
	if r.layer == nil {
		// No object: a node carried over whose file was gone (restore.go).
		return -1, unix.ESTALE
	}
	return dirFds.retry(func() (int, error) { return openByHandle(r.layer, r.fh, flags) })
}

// lstatAt lstats name in directory r.
func (r realRef) lstatAt(name string, st *unix.Stat_t) error {
	fd, done, err := r.pathFd()
	if err != nil {
		return err
	}
	defer done()
	return lstatAt(fd, name, st)
}

// refAt is refAt of name in directory r.
func (r realRef) refAt(name string, st *unix.Stat_t) (realRef, error) {
	fd, done, err := r.pathFd()
	if err != nil {
		return noRef, err
	}
	defer done()
	return refAt(r.layer, fd, name, st)
}

// isOpaque reports whether directory r hides the layers below it.
func (r realRef) isOpaque() (bool, error) {
	fd, done, err := r.pathFd()
	if err != nil {
		return false, err
	}
	defer done()
	return isOpaque(fd)
}

// setOpaque makes directory r hide the layers below it.
func (r realRef) setOpaque() error {
	fd, done, err := r.pathFd()
	if err != nil {
		return err
	}
	defer done()
	return setOpaque(fd)
}

// stat stats r.
func (r realRef) stat(st *unix.Stat_t) error {
	fd, done, err := r.pathFd()
	if err != nil {
		return err
	}
	defer done()
	return fstat(fd, st)
}

// same reports whether two refs name the same object.
func (r realRef) same(o realRef) bool {
	if r.layer != o.layer {
		return false
	}
	if r.fd >= 0 || o.fd >= 0 {
		var a, b unix.Stat_t
		return r.stat(&a) == nil && o.stat(&b) == nil && a.Ino == b.Ino && a.Dev == b.Dev
	}
	return r.fh.Type() == o.fh.Type() && bytes.Equal(r.fh.Bytes(), o.fh.Bytes())
}

// dropFd closes r's cached fd, if it has one: now, or when its last user
// releases it. A later use opens it again.
func (r realRef) dropFd() {
	if r.dir != nil {
		r.dir.drop()
	}
}

func (r *realRef) close() {
	if r.fd >= 0 {
		unix.Close(r.fd)
	}
	r.dropFd()
	*r = noRef
}

// keepOpenable gives node c an O_PATH fd of its upper file before that
// file loses its last name (dirfd/name, checked to be the same file):
// the kernel may open c after the name went, as it opens a file looked
// up before a rename over it, and a file handle of a deleted file opens
// no more (ESTALE). The fd lives as long as the node.
func (c *node) keepOpenable(dirfd int, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.upper.valid() || c.upper.fd >= 0 {
		return
	}
	fd, err := openPath(dirfd, name)
	if err != nil {
		return
	}
	var st unix.Stat_t
	fh, _, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	if err != nil || fstat(fd, &st) != nil || st.Nlink > 1 ||
		fh.Type() != c.upper.fh.Type() || !bytes.Equal(fh.Bytes(), c.upper.fh.Bytes()) {
		unix.Close(fd)
		return
	}
	c.upper.fd = fd
	c.fds.add(c.upper)
}
