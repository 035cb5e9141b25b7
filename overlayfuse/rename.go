package overlayfuse

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

var _ fs.NodeRenamer = (*node)(nil)

// Rename moves an entry in the upper layer. What it moves is first made
// wholly upper: a file is copied up, a directory with lower parts is
// copied up with everything below it and made opaque. So, unlike kernel
// overlayfs, a lower directory can be renamed, and the result needs no
// redirect to mount with the kernel.
func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	p2, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	if n.ofs.readOnly() {
		return syscall.EROFS
	}
	if flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE) != 0 ||
		flags == unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE {
		return syscall.EINVAL
	}
	if len(newName) > 255 {
		return syscall.ENAMETOOLONG
	}
	exchange := flags&unix.RENAME_EXCHANGE != 0
	if errno := n.checkRename(ctx, name, p2, newName); errno != 0 {
		return errno
	}

	src, errno := n.resolve(name)
	if errno != 0 {
		return errno
	}
	src.release()
	dst, errno := p2.resolve(newName)
	dstExists := errno == 0
	if errno != 0 && errno != syscall.ENOENT {
		return errno
	}
	dst.release()
	srcDir := src.st.Mode&unix.S_IFMT == unix.S_IFDIR
	dstDir := dstExists && dst.st.Mode&unix.S_IFMT == unix.S_IFDIR

	srcNode, errno := n.child(ctx, name)
	if errno != 0 {
		return errno
	}
	var dstNode *node
	if dstExists {
		if dstNode, errno = p2.child(ctx, newName); errno != 0 {
			return errno
		}
	}
	switch {
	case flags&unix.RENAME_NOREPLACE != 0 && dstExists:
		return syscall.EEXIST
	case exchange && !dstExists:
		return syscall.ENOENT
	case dstNode == srcNode && dstNode != nil:
		return 0 // two names of one file: nothing to do
	case !exchange && dstExists && srcDir && !dstDir:
		return syscall.ENOTDIR
	case !exchange && dstExists && !srcDir && dstDir:
		return syscall.EISDIR
	}
	if !exchange && dstDir {
		if empty, errno := dstNode.isEmptyDir(); errno != 0 {
			return errno
		} else if !empty {
			return syscall.ENOTEMPTY
		}
	}

	n.ofs.copyMu.Lock()
	defer n.ofs.copyMu.Unlock()
	for _, c := range []*node{srcNode, dstNode} {
		if c == nil || (c == dstNode && !exchange) {
			continue
		}
		if errno := c.copyUpWhole(); errno != 0 {
			return errno
		}
	}
	if errno := n.copyUpLocked(); errno != 0 {
		return errno
	}
	if errno := p2.copyUpLocked(); errno != 0 {
		return errno
	}
	d1, done1, err := n.upperDirFd()
	if err != nil {
		return n.ofs.toErrno(err)
	}
	defer done1()
	d2, done2, err := p2.upperDirFd()
	if err != nil {
		return n.ofs.toErrno(err)
	}
	defer done2()
	if dstExists && !exchange && !dstDir {
		dstNode.keepOpenable(d2, newName)
	}
	srcLower := n.lowerPositive(name)
	dstLower := p2.lowerPositive(newName)

	switch {
	case exchange:
		err = unix.Renameat2(d1, name, d2, newName, unix.RENAME_EXCHANGE)
	case dstExists:
		if up := dstNode.upperRef(); dstDir && up.valid() {
			// An empty merged directory may still hold whiteouts.
			fd, done, err := up.pathFd()
			if err != nil {
				return n.ofs.toErrno(err)
			}
			err = removeChildren(fd)
			done()
			if err != nil {
				return n.ofs.toErrno(err)
			}
		}
		rf := uint(0)
		if srcLower {
			rf = unix.RENAME_WHITEOUT
		}
		err = unix.Renameat2(d1, name, d2, newName, rf)
	default:
		err = n.renameToFree(d1, name, d2, newName, srcLower)
	}
	if err != nil {
		return n.ofs.toErrno(err)
	}
	if n != p2 {
		// As the kernel: a directory that an entry with an origin moved
		// into is impure.
		markImpureFor(d2, newName)
		if exchange {
			markImpureFor(d1, name)
		}
	}
	// A directory now standing where a lower layer has the name must not
	// merge with it.
	if srcDir && dstLower {
		if err := srcNode.upperRef().setOpaque(); err != nil {
			return n.ofs.toErrno(err)
		}
	}
	if exchange && dstDir && srcLower {
		if err := dstNode.upperRef().setOpaque(); err != nil {
			return n.ofs.toErrno(err)
		}
	}
	return 0
}

// renameToFree renames to a name the merged view does not show. An upper
// whiteout there is swapped with the source, which leaves the whiteout at
// the old name: kept when a lower layer shows that name, removed if not.
func (n *node) renameToFree(d1 int, name string, d2 int, newName string, srcLower bool) error {
	var st unix.Stat_t
	if err := lstatAt(d2, newName, &st); err == nil && isWhiteout(&st) {
		if err := unix.Renameat2(d1, name, d2, newName, unix.RENAME_EXCHANGE); err != nil {
			return err
		}
		if !srcLower {
			return unix.Unlinkat(d1, name, 0)
		}
		return nil
	}
	rf := uint(unix.RENAME_NOREPLACE)
	if srcLower {
		rf |= unix.RENAME_WHITEOUT
	}
	return unix.Renameat2(d1, name, d2, newName, rf)
}

// child returns the node of name in n, the one the kernel knows if any.
func (n *node) child(ctx context.Context, name string) (*node, syscall.Errno) {
	if ch := n.GetChild(name); ch != nil {
		if c, ok := ch.Operations().(*node); ok {
			return c, 0
		}
	}
	e, errno := n.resolve(name)
	if errno != 0 {
		return nil, errno
	}
	c, _, errno := n.ofs.nodeFor(ctx, n, name, &e)
	return c, errno
}

// copyUpWhole makes n wholly upper: a non-directory is copied up; a
// directory is copied up with everything below it and made opaque.
// ofs.copyMu must be held.
func (n *node) copyUpWhole() syscall.Errno {
	if errno := n.copyUpLocked(); errno != 0 {
		return errno
	}
	if !n.isDir() {
		return 0
	}
	n.mu.Lock()
	upper, lowers := n.upper, n.lowers
	n.mu.Unlock()
	if len(lowers) == 0 {
		return 0
	}
	links := map[uint64]realRef{}
	if errno := n.ofs.copyUpTree(upper, lowers, links); errno != 0 {
		return errno
	}
	n.adoptUpperTree()
	return 0
}

// copyUpTree copies every merged entry below a directory into its upper
// directory, and makes each directory on the way opaque. links holds the
// upper copy of each lower hard link met, so its names stay one file.
func (ofs *overlayFS) copyUpTree(upper realRef, lowers []realRef, links map[uint64]realRef) syscall.Errno {
	ents, errno := ofs.listMerged(upper, lowers)
	if errno != 0 {
		return errno
	}
	for _, de := range ents {
		if errno := ofs.copyUpTreeEntry(upper, lowers, de.Name, links); errno != 0 {
			return errno
		}
	}
	return ofs.toErrno(upper.setOpaque())
}

func (ofs *overlayFS) copyUpTreeEntry(upper realRef, lowers []realRef, name string, links map[uint64]realRef) syscall.Errno {
	e, errno := resolveIn(upper, lowers, name)
	if errno != 0 {
		return errno
	}
	defer e.release()
	isDir := e.isDir()
	if e.upper.valid() && !isDir {
		return 0
	}
	if !e.upper.valid() {
		// The fds are released before the recursion below, which would
		// otherwise pin two per level.
		ufd, done, err := upper.pathFd()
		if err != nil {
			return ofs.toErrno(err)
		}
		if !isDir && e.lowerSt.Nlink > 1 {
			ino := ofs.ino(e.lowerSt.Dev, e.lowerSt.Ino)
			if r, ok := links[ino]; ok {
				defer done()
				return ofs.toErrno(linkRef(r, ufd, name))
			}
			if live := ofs.liveNode(ino); live != nil && live.hasUpper() {
				defer done()
				return ofs.toErrno(linkRef(live.upperRef(), ufd, name))
			}
		}
		r, errno := ofs.copyUpObject(e.lowers[0], ufd, name)
		done()
		if errno != 0 {
			return errno
		}
		if !isDir {
			if e.lowerSt.Nlink > 1 {
				links[ofs.ino(e.lowerSt.Dev, e.lowerSt.Ino)] = r
			}
			return 0
		}
		e.upper = r
	}
	if len(e.lowers) == 0 {
		return 0
	}
	return ofs.copyUpTree(e.upper, e.lowers, links)
}

// adoptUpperTree points the nodes the kernel knows below n at their new
// upper objects after copyUpTree.
func (n *node) adoptUpperTree() {
	n.dropLowers()
	up := n.upperRef()
	for name, ch := range n.Children() {
		c, ok := ch.Operations().(*node)
		if !ok {
			continue
		}
		if !c.hasUpper() {
			var st unix.Stat_t
			if up.lstatAt(name, &st) != nil {
				continue
			}
			r, err := up.refAt(name, &st)
			if err != nil {
				continue
			}
			c.setUpper(r)
		}
		if c.isDir() {
			c.adoptUpperTree()
		}
	}
}

// dropLowers stops merging lower directories into n, now opaque.
func (n *node) dropLowers() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.lowers = nil
}
