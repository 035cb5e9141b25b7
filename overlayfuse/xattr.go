package overlayfuse

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
)

var (
	_ fs.NodeGetxattrer    = (*node)(nil)
	_ fs.NodeSetxattrer    = (*node)(nil)
	_ fs.NodeRemovexattrer = (*node)(nil)
	_ fs.NodeListxattrer   = (*node)(nil)
)

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if isPrivateXattr(attr) {
		return 0, syscall.ENODATA
	}
	sz, err := fgetxattr(n.realFd(), attr, dest)
	return uint32(sz), toErrno(err)
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	names, err := listxattrAll(n.realFd())
	if err != nil {
		return 0, toErrno(err)
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
	if errno := n.copyUp(ctx); errno != 0 {
		return errno
	}
	return toErrno(fsetxattr(n.upperFd(), attr, data, int(flags)))
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if isPrivateXattr(attr) {
		return syscall.EOPNOTSUPP
	}
	// Removing what is not there must not copy up.
	if _, err := fgetxattr(n.realFd(), attr, nil); err != nil {
		return toErrno(err)
	}
	if errno := n.copyUp(ctx); errno != 0 {
		return errno
	}
	return toErrno(fremovexattr(n.upperFd(), attr))
}
