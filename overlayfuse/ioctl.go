package overlayfuse

import (
	"context"
	"encoding/binary"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

var _ fs.NodeIoctler = (*node)(nil)

// The inode flag ioctls (lsattr/chattr, xfs_io's chattr). The kernel sends
// them on a handle it opens itself, read-only: a set copies up first, as
// kernel overlayfs does, and goes to the upper object, but for immutable
// and append-only, which go to protattr (fileattr.go).
const (
	fsIocGetflags = unix.FS_IOC_GETFLAGS
	fsIocSetflags = unix.FS_IOC_SETFLAGS
	// x/sys/unix lacks these: the kernel's _IOR('X', 31, struct fsxattr)
	// and _IOW('X', 32, struct fsxattr).
	fsIocFsgetxattr = iocRead | fsxattrSize<<16 | 'X'<<8 | 31
	fsIocFssetxattr = iocWrite | fsxattrSize<<16 | 'X'<<8 | 32
	// fsIocGetfsuuid is FS_IOC_GETFSUUID (Linux 6.5): _IOR(0x15, 0,
	// struct fsuuid2), 17 bytes.
	fsIocGetfsuuid = iocRead | 17<<16 | 0x15<<8 | 0
)

// The direction bits of _IOR and _IOW differ between architectures
// (bits 30-31 on most, 29-31 on powerpc and mips); take this one's from
// ioctls x/sys/unix defines. Sizes here are below 2^13, so bit 29 is a
// direction bit wherever it is set.
const (
	iocRead     = unix.FS_IOC_GETFLAGS &^ 0x1fffffff
	iocWrite    = unix.FS_IOC_SETFLAGS &^ 0x1fffffff
	fsxattrSize = 28
)

func (n *node) Ioctl(ctx context.Context, f fs.FileHandle, cmd uint32, arg uint64, input []byte, output []byte) (int32, syscall.Errno) {
	var set bool
	var size int
	// imm and app are the immutable and append-only bits in the first
	// word of the argument.
	imm, app := uint32(fsImmutableFl), uint32(fsAppendFl)
	switch cmd {
	case fsIocGetflags:
		size = 4
	case fsIocSetflags:
		size, set = 4, true
	case fsIocFsgetxattr:
		size, imm, app = fsxattrSize, fsxImmutable, fsxAppend
	case fsIocFssetxattr:
		size, set, imm, app = fsxattrSize, true, fsxImmutable, fsxAppend
	default:
		return 0, syscall.ENOTTY
	}
	buf := make([]byte, max(size, 8))
	r := n.real()
	var prot uint32
	if set {
		if len(input) < size {
			return 0, syscall.EINVAL
		}
		copy(buf, input)
		// Immutable and append-only go to protattr, not to the upper
		// inode, and need CAP_LINUX_IMMUTABLE to change.
		w := binary.NativeEndian.Uint32(buf)
		if w&imm != 0 {
			prot |= fsImmutableFl
		}
		if w&app != 0 {
			prot |= fsAppendFl
		}
		if prot != n.protFlags() {
			if c, ok := fuse.FromContext(ctx); !ok || c.Uid != 0 {
				return 0, syscall.EPERM
			}
		}
		binary.NativeEndian.PutUint32(buf, w&^(imm|app))
		if errno := n.copyUp(ctx); errno != 0 {
			return 0, errno
		}
		if errno := n.setProtFlags(prot); errno != 0 {
			return 0, errno
		}
		r = n.upperRef()
	} else if len(output) < size {
		return 0, syscall.EINVAL
	}
	flags := unix.O_RDONLY | unix.O_NONBLOCK
	if n.isDir() {
		flags |= unix.O_DIRECTORY
	}
	fd, err := r.open(flags)
	if err != nil {
		return 0, n.ofs.toErrno(err)
	}
	defer unix.Close(fd)
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(cmd), uintptr(unsafe.Pointer(&buf[0])))
	if e != 0 {
		return 0, e
	}
	if !set {
		if r.layer.upper {
			w := binary.NativeEndian.Uint32(buf)
			p := n.protFlags()
			if p&fsImmutableFl != 0 {
				w |= imm
			}
			if p&fsAppendFl != 0 {
				w |= app
			}
			binary.NativeEndian.PutUint32(buf, w)
		}
		copy(output, buf[:size])
	}
	return 0, 0
}
