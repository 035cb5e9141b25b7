package overlayfuse

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Inode flags (chattr). Kernel overlayfs gives its inode the immutable and
// append-only flags of the real one, and the VFS refuses what they forbid
// before overlayfs sees the call. A FUSE inode carries no such flags, so
// the checks the VFS would make are made here, before any copy-up.
//
// Copy-up carries sync and noatime to the upper file as real flags, and
// immutable and append-only in trusted.overlay.protattr (as real flags
// they would keep the copy from being finished and renamed into place);
// the flag ioctls through the mount do the same.
const (
	fsSyncFl      = 0x8
	fsImmutableFl = 0x10
	fsAppendFl    = 0x20
	fsNoatimeFl   = 0x80
	// protMask is OVL_PROT_FS_FLAGS_MASK, copyMask OVL_COPY_FS_FLAGS_MASK.
	protMask = fsImmutableFl | fsAppendFl
	copyMask = fsSyncFl | fsNoatimeFl

	// The same flags in struct fsxattr's fsx_xflags.
	fsxImmutable = 0x8
	fsxAppend    = 0x10

	protattrXattr = privateXattrPrefix + "protattr"

	// protKnown marks node.prot as read.
	protKnown = 1 << 31
)

// protFlags are n's immutable and append-only flags, read once: from
// protattr for an upper object, from the real flags for a lower one.
func (n *node) protFlags() uint32 {
	n.mu.Lock()
	p := n.prot
	r, upper := n.realLocked(), n.upper.valid()
	n.mu.Unlock()
	if p&protKnown != 0 {
		return p &^ protKnown
	}
	var err error
	if upper {
		p, err = n.protattr(r)
	} else {
		p, err = lowerProt(r)
	}
	if err != nil {
		// Not known: no flags, and ask again next time.
		return 0
	}
	n.mu.Lock()
	if n.prot == 0 {
		n.prot = p | protKnown
	}
	n.mu.Unlock()
	return p
}

// protattr reads the flags protattr of upper object r records.
func (n *node) protattr(r realRef) (uint32, error) {
	names, errno := n.xattrNames()
	if errno != 0 {
		return 0, errno
	}
	found := false
	for _, name := range names {
		found = found || name == protattrXattr
	}
	if !found {
		return 0, nil
	}
	x, done, err := n.xattrTarget(r)
	if err != nil {
		return 0, err
	}
	defer done()
	v, err := x.getAll(protattrXattr)
	if err == unix.ENODATA {
		return 0, nil
	}
	var p uint32
	for _, c := range v {
		switch c {
		case 'a':
			p |= fsAppendFl
		case 'i':
			p |= fsImmutableFl
		}
	}
	return p, err
}

// protattrValue is protattr's value for flags, as the kernel writes it.
func protattrValue(flags uint32) []byte {
	var v []byte
	if flags&fsAppendFl != 0 {
		v = append(v, 'a')
	}
	if flags&fsImmutableFl != 0 {
		v = append(v, 'i')
	}
	return v
}

// lowerProt reads the immutable and append-only flags of r from statx,
// which answers them for an O_PATH fd of any type, without opening the
// file itself.
func lowerProt(r realRef) (uint32, error) {
	fd, done, err := r.pathFd()
	if err != nil {
		return 0, err
	}
	defer done()
	var stx unix.Statx_t
	const at = unix.AT_EMPTY_PATH | unix.AT_SYMLINK_NOFOLLOW | unix.AT_STATX_DONT_SYNC
	if err := unix.Statx(fd, "", at, 0, &stx); err != nil {
		return 0, err
	}
	var p uint32
	if stx.Attributes&unix.STATX_ATTR_IMMUTABLE != 0 {
		p |= fsImmutableFl
	}
	if stx.Attributes&unix.STATX_ATTR_APPEND != 0 {
		p |= fsAppendFl
	}
	return p, nil
}

func getFlags(fd int) (uint32, error) {
	v, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err == unix.ENOTTY || err == unix.EOPNOTSUPP || err == unix.EINVAL {
		return 0, nil
	}
	return v, err
}

// checkOpen refuses what may_open refuses: a writable open of an
// immutable file; of an append-only one, one without O_APPEND or with
// O_TRUNC.
func (n *node) checkOpen(flags uint32) syscall.Errno {
	if !isWritable(flags) {
		return 0
	}
	p := n.protFlags()
	if p&fsImmutableFl != 0 || (p&fsAppendFl != 0 && (flags&unix.O_APPEND == 0 || flags&unix.O_TRUNC != 0)) {
		return syscall.EPERM
	}
	return 0
}

// checkSetattr refuses what notify_change and truncate refuse: any change
// of an immutable file; of an append-only one, all but setting the times
// to now.
func (n *node) checkSetattr(in *fuse.SetAttrIn) syscall.Errno {
	const now = fuse.FATTR_ATIME_NOW | fuse.FATTR_MTIME_NOW
	const times = fuse.FATTR_ATIME | fuse.FATTR_MTIME | now
	change := in.Valid & (fuse.FATTR_MODE | fuse.FATTR_UID | fuse.FATTR_GID | fuse.FATTR_SIZE | times)
	if change == 0 {
		return 0
	}
	p := n.protFlags()
	if p&fsImmutableFl != 0 {
		return syscall.EPERM
	}
	if p&fsAppendFl != 0 {
		explicit := (change&fuse.FATTR_ATIME != 0 && change&fuse.FATTR_ATIME_NOW == 0) ||
			(change&fuse.FATTR_MTIME != 0 && change&fuse.FATTR_MTIME_NOW == 0)
		if change&^times != 0 || explicit {
			return syscall.EPERM
		}
	}
	return 0
}

// checkChange refuses a change of an immutable or append-only object
// itself: xattrs, a new link to it.
func (n *node) checkChange() syscall.Errno {
	if n.protFlags() != 0 {
		return syscall.EPERM
	}
	return 0
}

// checkNewEntry refuses a new name in an immutable directory.
func (n *node) checkNewEntry() syscall.Errno {
	if n.protFlags()&fsImmutableFl != 0 {
		return syscall.EPERM
	}
	return 0
}

// checkLink is checkChange of target and checkNewEntry of n.
func (n *node) checkLink(target *node) syscall.Errno {
	if errno := target.checkChange(); errno != 0 {
		return errno
	}
	return n.checkNewEntry()
}

// checkDelete refuses what may_delete refuses: taking name out of an
// immutable or append-only directory, or an immutable or append-only
// object out of any. A name that does not exist is left to the caller.
func (n *node) checkDelete(ctx context.Context, name string) syscall.Errno {
	if n.protFlags() != 0 {
		return syscall.EPERM
	}
	c, errno := n.child(ctx, name)
	if errno != 0 {
		return 0
	}
	return c.checkChange()
}

// checkRename is checkDelete of the source and of a replaced target, and
// checkNewEntry of the target directory.
func (n *node) checkRename(ctx context.Context, name string, p2 *node, newName string) syscall.Errno {
	if errno := n.checkDelete(ctx, name); errno != 0 {
		return errno
	}
	if errno := p2.checkNewEntry(); errno != 0 {
		return errno
	}
	if _, errno := p2.child(ctx, newName); errno != 0 {
		return 0
	}
	return p2.checkDelete(ctx, newName)
}

// copyFileattr gives dst, the copy of src built in the work dir, the flags
// kernel overlayfs carries over: sync and noatime as real flags,
// immutable and append-only in protattr.
func copyFileattr(src int, st *unix.Stat_t, dst int) syscall.Errno {
	mode := st.Mode & unix.S_IFMT
	if mode != unix.S_IFREG && mode != unix.S_IFDIR {
		return 0
	}
	in, err := reopen(src, unix.O_RDONLY|unix.O_NONBLOCK)
	if err != nil {
		return toErrno(err)
	}
	flags, err := getFlags(in)
	unix.Close(in)
	if err != nil || flags&(protMask|copyMask) == 0 {
		return toErrno(err)
	}
	if flags&protMask != 0 {
		if err := fdXpath(dst).set(protattrXattr, protattrValue(flags), 0); err != nil {
			return toErrno(err)
		}
	}
	if flags&copyMask == 0 {
		return 0
	}
	// dst may be an O_PATH fd, which takes no ioctl: open what it names.
	out, err := reopen(dst, unix.O_RDONLY|unix.O_NONBLOCK)
	if err != nil {
		return toErrno(err)
	}
	defer unix.Close(out)
	old, err := getFlags(out)
	if err != nil {
		return toErrno(err)
	}
	return toErrno(unix.IoctlSetPointerInt(out, unix.FS_IOC_SETFLAGS, int(old&^copyMask|flags&copyMask)))
}

// setProtFlags records n's new immutable and append-only flags in
// protattr of its upper object, which must exist.
func (n *node) setProtFlags(p uint32) syscall.Errno {
	if n.protFlags() == p {
		return 0
	}
	defer n.forgetXattrs()
	x, done, err := n.xattrTarget(n.upperRef())
	if err != nil {
		return n.ofs.toErrno(err)
	}
	defer done()
	if p == 0 {
		err = x.remove(protattrXattr)
		if err == unix.ENODATA {
			err = nil
		}
	} else {
		err = x.set(protattrXattr, protattrValue(p), 0)
	}
	if err != nil {
		return n.ofs.toErrno(err)
	}
	n.mu.Lock()
	n.prot = p | protKnown
	n.mu.Unlock()
	return 0
}
