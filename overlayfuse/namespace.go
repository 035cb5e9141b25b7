package overlayfuse

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

var (
	_ fs.NodeCreater   = (*node)(nil)
	_ fs.NodeMkdirer   = (*node)(nil)
	_ fs.NodeMknoder   = (*node)(nil)
	_ fs.NodeSymlinker = (*node)(nil)
	_ fs.NodeLinker    = (*node)(nil)
	_ fs.NodeUnlinker  = (*node)(nil)
	_ fs.NodeRmdirer   = (*node)(nil)
)

// newEntry is where a new name goes: the parent's upper directory, and
// whether an upper whiteout must be replaced there.
type newEntry struct {
	dir          int
	done         func() // releases dir
	overWhiteout bool
	uid, gid     int
	setgid       bool // the parent passes its group and setgid on
}

// prepareNew checks that name is free in n and copies n up for it.
func (n *node) prepareNew(ctx context.Context, name string) (ne newEntry, errno syscall.Errno) {
	if n.ofs.readOnly() {
		return ne, syscall.EROFS
	}
	if len(name) > 255 {
		return ne, syscall.ENAMETOOLONG
	}
	e, errno := n.resolve(name)
	if errno == 0 {
		e.release()
		return ne, syscall.EEXIST
	}
	if errno != syscall.ENOENT {
		return ne, errno
	}
	if errno := n.checkNewEntry(); errno != 0 {
		return ne, errno
	}
	if errno := n.copyUp(ctx); errno != 0 {
		return ne, errno
	}
	dir, done, err := n.upperDirFd()
	if err != nil {
		return ne, n.ofs.toErrno(err)
	}
	ne.dir, ne.done = dir, done
	ne.overWhiteout = e.upperWhiteout
	if ne.uid, ne.gid, errno = n.ofs.creator(ctx); errno != 0 {
		ne.done()
		return ne, errno
	}
	var pst unix.Stat_t
	if err := fstat(ne.dir, &pst); err != nil {
		ne.done()
		return ne, n.ofs.toErrno(err)
	}
	if pst.Mode&unix.S_ISGID != 0 {
		ne.gid = int(pst.Gid)
		ne.setgid = true
	}
	return ne, 0
}

// place moves tmp, built in the work dir and held as fd, to name: over
// the upper whiteout (whose removal then follows) or to a free name.
func (ofs *overlayFS) place(fd int, tmp string, ne newEntry, name string) syscall.Errno {
	flags := uint(unix.RENAME_NOREPLACE)
	if ne.overWhiteout {
		flags = unix.RENAME_EXCHANGE
	}
	if err := ofs.renameBuilt(fd, tmp, ne.dir, name, flags); err != nil {
		_ = removeAt(ofs.workFd, tmp, true) // best effort: the next mount empties the work dir
		return ofs.toErrno(err)
	}
	if ne.overWhiteout {
		// The whiteout exchanged out; the next mount empties the work dir.
		_ = unix.Unlinkat(ofs.workFd, tmp, 0)
	}
	return 0
}

// own gives a new object, held as fd, its creator's owner; chown drops
// set-id bits, so mode is set again where it has them.
func own(fd int, ne newEntry, mode uint32) error {
	if ne.uid > 0 || ne.gid > 0 {
		if err := chownFd(fd, ne.uid, ne.gid); err != nil {
			return err
		}
		if mode&(unix.S_ISUID|unix.S_ISGID) != 0 && mode&unix.S_IFMT != unix.S_IFLNK {
			return chmodFd(fd, mode)
		}
	}
	return nil
}

// makeNew creates one object with mk, in the work dir when it must
// replace a whiteout, and returns its new node. mk returns an fd of what
// it made when it has one (a created file), else -1, and the object is
// then opened as what it must be, never followed.
func (n *node) makeNew(ctx context.Context, name string, mode uint32, rdev uint32, out *fuse.EntryOut,
	mk func(dirfd int, name string) (int, error)) (*fs.Inode, syscall.Errno) {
	ne, errno := n.prepareNew(ctx, name)
	if errno != 0 {
		return nil, errno
	}
	defer ne.done()
	if ne.setgid && mode&unix.S_IFMT == unix.S_IFDIR {
		mode |= unix.S_ISGID
	}
	dir, at := ne.dir, name
	if ne.overWhiteout {
		dir, at = n.ofs.workFd, n.ofs.tmpName()
	}
	fd, err := mk(dir, at)
	if err != nil {
		return nil, n.ofs.toErrno(err)
	}
	if fd < 0 {
		if fd, err = openBuilt(dir, at, mode&unix.S_IFMT, uint64(rdev)); err != nil {
			_ = removeAt(dir, at, true)
			return nil, n.ofs.toErrno(err)
		}
		defer unix.Close(fd)
	}
	if err := own(fd, ne, mode); err != nil {
		_ = removeAt(dir, at, true)
		return nil, n.ofs.toErrno(err)
	}
	if ne.overWhiteout {
		if mode&unix.S_IFMT == unix.S_IFDIR {
			// A directory made over a deleted one hides what was below.
			if err := setOpaque(fd); err != nil {
				_ = removeAt(dir, at, true)
				return nil, n.ofs.toErrno(err)
			}
		}
		if errno := n.ofs.place(fd, at, ne, name); errno != 0 {
			return nil, errno
		}
	}
	return n.newChild(ctx, name, true, out)
}

// newChild looks up a name just made in the upper directory; created: for
// a new object, not a link of an existing one.
func (n *node) newChild(ctx context.Context, name string, created bool, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	e, errno := n.resolve(name)
	if errno != 0 {
		return nil, errno
	}
	e.created = created
	child, errno := n.entryNode(ctx, name, &e, out)
	if errno != 0 {
		return nil, errno
	}
	return child.EmbeddedInode(), 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return n.makeNew(ctx, name, mode|unix.S_IFDIR, 0, out, func(dirfd int, name string) (int, error) {
		return -1, unix.Mkdirat(dirfd, name, mode)
	})
}

func (n *node) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if mode&unix.S_IFMT == unix.S_IFCHR && dev == 0 {
		// As kernel overlayfs: a 0/0 device is a whiteout on disk.
		return nil, syscall.EPERM
	}
	fd := -1
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	return n.makeNew(ctx, name, mode, dev, out, func(dirfd int, name string) (int, error) {
		if mode&unix.S_IFMT == unix.S_IFREG {
			// Made by O_EXCL, whose fd is the new file for sure.
			var err error
			fd, err = unix.Openat(dirfd, name, unix.O_CREAT|unix.O_EXCL|unix.O_RDONLY|unix.O_CLOEXEC, mode&07777)
			return fd, err
		}
		return -1, unix.Mknodat(dirfd, name, mode, int(dev))
	})
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return n.makeNew(ctx, name, unix.S_IFLNK, 0, out, func(dirfd int, name string) (int, error) {
		return -1, unix.Symlinkat(target, dirfd, name)
	})
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	var fd int = -1
	flags &^= unix.O_EXCL | unix.O_CREAT | unix.O_TRUNC
	ch, errno := n.makeNew(ctx, name, mode|unix.S_IFREG, 0, out, func(dirfd int, name string) (int, error) {
		var err error
		fd, err = unix.Openat(dirfd, name, int(flags)|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, mode&07777)
		return fd, err
	})
	if errno != 0 {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, nil, 0, errno
	}
	child := ch.Operations().(*node)
	return ch, child.createdFile(fd, flags), child.openFlags(), 0
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	t, ok := target.(*node)
	if !ok {
		return nil, syscall.EXDEV
	}
	if n.ofs.readOnly() {
		return nil, syscall.EROFS
	}
	if errno := n.checkLink(t); errno != 0 {
		return nil, errno
	}
	if errno := t.copyUp(ctx); errno != 0 {
		return nil, errno
	}
	ne, errno := n.prepareNew(ctx, name)
	if errno != 0 {
		return nil, errno
	}
	defer ne.done()
	dir, at := ne.dir, name
	if ne.overWhiteout {
		dir, at = n.ofs.workFd, n.ofs.tmpName()
	}
	tfd, done, err := t.upperRef().pathFd()
	if err != nil {
		return nil, n.ofs.toErrno(err)
	}
	defer done()
	if err := unix.Linkat(tfd, "", dir, at, unix.AT_EMPTY_PATH); err != nil {
		return nil, n.ofs.toErrno(err)
	}
	if ne.overWhiteout {
		if errno := n.ofs.place(tfd, at, ne, name); errno != 0 {
			return nil, errno
		}
	}
	return n.newChild(ctx, name, false, out)
}

// lowerPositive reports whether a lower layer of n shows name, so that
// removing it from the upper needs a whiteout.
func (n *node) lowerPositive(name string) bool {
	n.mu.Lock()
	lowers := n.lowers
	n.mu.Unlock()
	for _, l := range lowers {
		var st unix.Stat_t
		if err := l.lstatAt(name, &st); err != nil {
			continue
		}
		return !isWhiteout(&st)
	}
	return false
}

// removeEntry takes name out of the merged view of n: the upper object
// goes (to the work dir, atomically leaving a whiteout when a lower
// layer has the name too), and a lower-only name gets a whiteout.
func (n *node) removeEntry(ctx context.Context, name string, e *entry, dir bool) syscall.Errno {
	if errno := n.copyUp(ctx); errno != 0 {
		return errno
	}
	pfd, done, err := n.upperDirFd()
	if err != nil {
		return n.ofs.toErrno(err)
	}
	defer done()
	lower := n.lowerPositive(name)
	if !e.upper.valid() {
		return n.ofs.toErrno(n.ofs.whiteout(pfd, name))
	}
	if !lower {
		flag := 0
		if dir {
			flag = unix.AT_REMOVEDIR
		}
		err := unix.Unlinkat(pfd, name, flag)
		if err != unix.ENOTEMPTY {
			return n.ofs.toErrno(err)
		}
		// An upper directory that only holds whiteouts.
	}
	var tmp string
	if lower {
		tmp, err = n.ofs.swapForWhiteout(pfd, name)
	} else {
		tmp = n.ofs.tmpName()
		err = unix.Renameat2(pfd, name, n.ofs.workFd, tmp, 0)
	}
	if err != nil {
		return n.ofs.toErrno(err)
	}
	// The name is gone from the merged view, which is what was asked;
	// what stays in the work dir goes at the next mount.
	_ = removeAt(n.ofs.workFd, tmp, dir)
	return 0
}

// resolveDeleted checks that name may be deleted from n and resolves it,
// as Unlink and Rmdir start.
func (n *node) resolveDeleted(ctx context.Context, name string) (entry, syscall.Errno) {
	if n.ofs.readOnly() {
		return entry{}, syscall.EROFS
	}
	if errno := n.checkDelete(ctx, name); errno != 0 {
		return entry{}, errno
	}
	return n.resolve(name)
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	e, errno := n.resolveDeleted(ctx, name)
	if errno != 0 {
		return errno
	}
	defer e.release()
	if e.st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return syscall.EISDIR
	}
	if ch := n.GetChild(name); ch != nil && e.upper.valid() {
		if c, ok := ch.Operations().(*node); ok {
			if pfd, done, err := n.upperDirFd(); err == nil {
				c.keepOpenable(pfd, name)
				done()
			}
		}
	}
	if errno := n.removeEntry(ctx, name, &e, false); errno != 0 {
		return errno
	}
	if ch := n.GetChild(name); ch != nil && !e.upper.valid() {
		if c, ok := ch.Operations().(*node); ok {
			c.mu.Lock()
			if c.lowerNlink > 0 {
				c.lowerMoved++
			}
			c.mu.Unlock()
		}
	}
	return 0
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	e, errno := n.resolveDeleted(ctx, name)
	if errno != 0 {
		return errno
	}
	defer e.release()
	if e.st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return syscall.ENOTDIR
	}
	ents, errno := n.ofs.listMerged(e.upper, e.lowers)
	if errno != 0 {
		return errno
	}
	if len(ents) > 0 {
		return syscall.ENOTEMPTY
	}
	return n.removeEntry(ctx, name, &e, true)
}

var _ fs.NodeTmpfiler = (*node)(nil)

// Tmpfile serves O_TMPFILE: an unnamed file in the upper directory,
// owned by the caller.
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if n.ofs.readOnly() {
		return nil, nil, 0, syscall.EROFS
	}
	if errno := n.checkNewEntry(); errno != 0 {
		return nil, nil, 0, errno
	}
	if errno := n.copyUp(ctx); errno != 0 {
		return nil, nil, 0, errno
	}
	var ne newEntry
	var errno syscall.Errno
	if ne.uid, ne.gid, errno = n.ofs.creator(ctx); errno != 0 {
		return nil, nil, 0, errno
	}
	dir, done, err := n.upperDirFd()
	if err != nil {
		return nil, nil, 0, n.ofs.toErrno(err)
	}
	defer done()
	flags &= openFlagsPassed &^ unix.O_TRUNC
	fd, err := unix.Openat(dir, ".", int(flags)|unix.O_TMPFILE|unix.O_CLOEXEC, mode&07777)
	if err != nil {
		return nil, nil, 0, n.ofs.toErrno(err)
	}
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	if err == nil && (ne.uid > 0 || ne.gid > 0) {
		err = unix.Fchown(fd, ne.uid, ne.gid)
		if err == nil && mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			err = unix.Fchmod(fd, mode&07777)
		}
	}
	var fh unix.FileHandle
	if err == nil {
		fh, _, err = unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	}
	if err == nil {
		err = unix.Fstat(fd, &st)
	}
	if err != nil {
		unix.Close(fd)
		return nil, nil, 0, n.ofs.toErrno(err)
	}
	child := n.ofs.newNode(realRef{layer: n.ofs.upper, fd: -1, fh: fh}, nil)
	child.bornUpper = true
	child.ino = n.ofs.ino(st.Dev, st.Ino)
	ch := n.NewInode(ctx, child, n.ofs.freshAttr(child.ino, unix.S_IFREG))
	child.fillAttr(&st, true, &out.Attr)
	return ch, child.createdFile(fd, flags), child.openFlags(), 0
}
