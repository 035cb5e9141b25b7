package overlayfuse

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

var _ fs.NodeSetattrer = (*node)(nil)

// Setattr copies up, then changes the upper object: chmod, chown,
// truncate and utimens.
func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if n.ofs.readOnly() {
		return syscall.EROFS
	}
	if errno := n.checkSetattr(in); errno != 0 {
		return errno
	}
	if errno := n.copyUp(ctx); errno != 0 {
		return errno
	}
	up, done, err := n.setattrFd(f)
	if err != nil {
		return n.ofs.toErrno(err)
	}
	defer done()
	symlink := n.StableAttr().Mode == syscall.S_IFLNK

	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		u, g := -1, -1
		if uok {
			u = int(uid)
		}
		if gok {
			g = int(gid)
		}
		u, g, errno := n.ofs.ids.toHost(u, g)
		if errno != 0 {
			return errno
		}
		if err := unix.Fchownat(up, "", u, g, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return n.ofs.toErrno(err)
		}
	}
	if mode, ok := in.GetMode(); ok && !symlink {
		if err := unix.Fchmodat(unix.AT_FDCWD, fdPath(up), mode&07777, 0); err != nil {
			return n.ofs.toErrno(err)
		}
	}
	if size, ok := in.GetSize(); ok {
		if errno := n.truncate(f, int64(size)); errno != 0 {
			return errno
		}
	}
	atime, aok := in.GetATime()
	mtime, mok := in.GetMTime()
	if aok || mok || in.Valid&(fuse.FATTR_ATIME_NOW|fuse.FATTR_MTIME_NOW) != 0 {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if aok {
			ts[0] = unix.NsecToTimespec(atime.UnixNano())
		}
		if mok {
			ts[1] = unix.NsecToTimespec(mtime.UnixNano())
		}
		if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
			ts[0] = unix.Timespec{Nsec: unix.UTIME_NOW}
		}
		if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
			ts[1] = unix.Timespec{Nsec: unix.UTIME_NOW}
		}
		if err := unix.UtimesNanoAt(up, "", ts, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return n.ofs.toErrno(err)
		}
	}
	if in.Valid&fuse.FATTR_KILL_SUIDGID != 0 && !symlink {
		if errno := n.killPrivOnSetattr(up); errno != 0 {
			return errno
		}
	}
	var st unix.Stat_t
	if err := fstat(up, &st); err != nil {
		return n.ofs.toErrno(err)
	}
	n.fillAttr(&st, true, &out.Attr)
	return 0
}

// truncate sets the size through the open handle when there is a
// writable one, otherwise through a fresh fd of the upper file.
func (n *node) truncate(f fs.FileHandle, size int64) syscall.Errno {
	if fh, ok := f.(*file); ok && fh.flags&unix.O_ACCMODE != unix.O_RDONLY {
		fh.mu.RLock()
		defer fh.mu.RUnlock()
		return n.ofs.toErrno(unix.Ftruncate(fh.fd, size))
	}
	fd, err := n.upperRef().open(unix.O_WRONLY)
	if err != nil {
		return n.ofs.toErrno(err)
	}
	defer unix.Close(fd)
	return n.ofs.toErrno(unix.Ftruncate(fd, size))
}

// setattrFd is an fd of the upper object for the changes: the open
// handle's (tar's fchown, fchmod and futimens) when it is the upper file,
// otherwise an O_PATH fd opened for them. The handle's fd number stays
// valid: the kernel releases no handle with a request on it in flight.
func (n *node) setattrFd(f fs.FileHandle) (int, func(), error) {
	if fh, ok := f.(*file); ok {
		fh.mu.RLock()
		fd, upper := fh.fd, fh.upper
		fh.mu.RUnlock()
		if upper && fd >= 0 {
			return fd, func() {}, nil
		}
	}
	return n.upperRef().pathFd()
}
