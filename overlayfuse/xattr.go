package overlayfuse

import (
	"context"
	"os"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/hanwen/go-fuse/v2/fs"
)

const selinuxXattr = "security.selinux"

// selinuxEnabled: without SELinux on the host, an absent label means the
// same as no label support.
var selinuxEnabled = func() bool {
	_, err := os.Stat("/sys/fs/selinux/enforce")
	return err == nil
}()

var (
	_ fs.NodeGetxattrer    = (*node)(nil)
	_ fs.NodeSetxattrer    = (*node)(nil)
	_ fs.NodeRemovexattrer = (*node)(nil)
	_ fs.NodeListxattrer   = (*node)(nil)
)

// xattrNames lists the attributes of the node's real object, from a cache:
// lower objects never change, and the upper one only through Setxattr,
// Removexattr and copy-up, which drop the cache. The kernel asks for
// security.* on every write and every `ls -l`; most files have none.
func (n *node) xattrNames() ([]string, syscall.Errno) {
	n.mu.Lock()
	if n.xattrsKnown {
		names := n.xattrs
		n.mu.Unlock()
		return names, 0
	}
	r := n.realLocked()
	n.mu.Unlock()
	x, done, err := n.xattrTarget(r)
	if err != nil {
		return nil, n.ofs.toErrno(err)
	}
	names, err := x.listAll()
	done()
	if err == unix.ENOTSUP {
		names, err = nil, nil
	}
	if err != nil {
		return nil, n.ofs.toErrno(err)
	}
	n.mu.Lock()
	if n.realLocked() == r {
		n.xattrs, n.xattrsKnown = names, true
	}
	n.mu.Unlock()
	return names, 0
}

func (n *node) forgetXattrs() {
	n.mu.Lock()
	n.xattrs, n.xattrsKnown = nil, false
	n.mu.Unlock()
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if isPrivateXattr(attr) {
		return 0, syscall.ENODATA
	}
	names, errno := n.xattrNames()
	if errno != 0 {
		return 0, errno
	}
	if !slices.Contains(names, attr) {
		if attr == selinuxXattr && !selinuxEnabled {
			// ls -l asks every file for its label, but takes ENOTSUP
			// as "this filesystem has none" and stops asking.
			return 0, syscall.EOPNOTSUPP
		}
		return 0, syscall.ENODATA
	}
	x, done, err := n.xattrTarget(n.real())
	if err != nil {
		return 0, n.ofs.toErrno(err)
	}
	defer done()
	sz, err := x.get(attr, dest)
	return uint32(sz), n.ofs.toErrno(err)
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	names, errno := n.xattrNames()
	if errno != 0 {
		return 0, errno
	}
	size := 0
	for _, name := range names {
		if !isPrivateXattr(name) {
			size += len(name) + 1
		}
	}
	if len(dest) == 0 {
		return uint32(size), 0
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	b := dest[:0]
	for _, name := range names {
		if !isPrivateXattr(name) {
			b = append(b, name...)
			b = append(b, 0)
		}
	}
	return uint32(len(b)), 0
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if isPrivateXattr(attr) {
		return syscall.EOPNOTSUPP
	}
	if errno := n.checkChange(); errno != 0 {
		return errno
	}
	return n.changeXattrs(ctx, func(x xpath) error { return x.set(attr, data, int(flags)) })
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if isPrivateXattr(attr) {
		return syscall.EOPNOTSUPP
	}
	if errno := n.checkChange(); errno != 0 {
		return errno
	}
	// Removing what is not there must not copy up.
	names, errno := n.xattrNames()
	if errno != 0 {
		return errno
	}
	if !slices.Contains(names, attr) {
		return syscall.ENODATA
	}
	return n.changeXattrs(ctx, func(x xpath) error { return x.remove(attr) })
}

// changeXattrs copies n up and runs change on the xattrs of its upper
// object.
func (n *node) changeXattrs(ctx context.Context, change func(xpath) error) syscall.Errno {
	if errno := n.copyUp(ctx); errno != 0 {
		return errno
	}
	defer n.forgetXattrs()
	x, done, err := n.xattrTarget(n.upperRef())
	if err != nil {
		return n.ofs.toErrno(err)
	}
	defer done()
	return n.ofs.toErrno(change(x))
}

// xattrTarget names r, a real object of n, for the xattr calls, through
// an O_PATH fd of it: never by its name, which may have been swapped
// since. The /proc name of an O_PATH fd of a symlink leads to the symlink
// itself.
func (n *node) xattrTarget(r realRef) (xpath, func(), error) {
	fd, done, err := r.pathFd()
	return fdXpath(fd), done, err
}
