package overlayfuse

import (
	"context"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

var _ fs.NodeIoctler = (*node)(nil)

// The inode flag ioctls (lsattr/chattr, xfs_io's chattr). The kernel sends
// them on a handle it opens itself, read-only: a set copies up first, as
// kernel overlayfs does, and goes to the upper object.
const (
	fsIocGetflags   = 0x80086601
	fsIocSetflags   = 0x40086602
	fsIocFsgetxattr = 0x801c581f
	fsIocFssetxattr = 0x401c5820
)

func (n *node) Ioctl(ctx context.Context, f fs.FileHandle, cmd uint32, arg uint64, input []byte, output []byte) (int32, syscall.Errno) {
	var set bool
	var size int
	switch cmd {
	case fsIocGetflags:
		size = 4
	case fsIocSetflags:
		size, set = 4, true
	case fsIocFsgetxattr:
		size = 28
	case fsIocFssetxattr:
		size, set = 28, true
	default:
		return 0, syscall.ENOTTY
	}
	buf := make([]byte, max(size, 8))
	r := n.real()
	if set {
		if len(input) < size {
			return 0, syscall.EINVAL
		}
		if errno := n.copyUp(ctx); errno != 0 {
			return 0, errno
		}
		r = n.upperRef()
		copy(buf, input)
	} else if len(output) < size {
		return 0, syscall.EINVAL
	}
	flags := unix.O_RDONLY | unix.O_NONBLOCK
	if n.isDir() {
		flags |= unix.O_DIRECTORY
	}
	fd, err := r.open(flags)
	if err != nil {
		return 0, toErrno(err)
	}
	defer unix.Close(fd)
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(cmd), uintptr(unsafe.Pointer(&buf[0])))
	if e != 0 {
		return 0, e
	}
	if !set {
		copy(output, buf[:size])
	}
	return 0, 0
}
