package overlayfuse

import (
	"os"

	"golang.org/x/sys/unix"
)

// Every name in the upper and work dirs can be swapped (for a symlink to
// a host file, say) by anyone who can write there, between any two of our
// syscalls. So an object we make is named once, when it is made; from
// then on we change it only through an fd of it (owner, mode, xattrs,
// times), and when we rename it into place we check that what arrived is
// the object we hold.

// openBuilt opens name in dirfd, which the caller has just made as an
// object of type typ (S_IFMT bits; rdev for devices), as an O_PATH fd,
// without following it, and refuses anything that is not such an object
// of ours.
func openBuilt(dirfd int, name string, typ uint32, rdev uint64) (int, error) {
	flags := unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if typ == unix.S_IFDIR {
		flags |= unix.O_DIRECTORY
	}
	fd, err := unix.Openat(dirfd, name, flags, 0)
	if err != nil {
		return -1, err
	}
	var st unix.Stat_t
	if err := fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	dev := typ == unix.S_IFCHR || typ == unix.S_IFBLK
	if st.Mode&unix.S_IFMT != typ || int(st.Uid) != os.Geteuid() || (dev && st.Rdev != rdev) {
		unix.Close(fd)
		return -1, unix.EIO
	}
	return fd, nil
}

// sameAt reports whether name in dirfd is the object fd refers to.
func sameAt(fd, dirfd int, name string) bool {
	var a, b unix.Stat_t
	return fstat(fd, &a) == nil && lstatAt(dirfd, name, &b) == nil && a.Dev == b.Dev && a.Ino == b.Ino
}

// renameBuilt renames tmp in the work dir, the object fd refers to, to
// name in dir with renameat2 flags, and checks that the object that
// arrived is that one. A stranger found there is put back and refused.
func (ofs *overlayFS) renameBuilt(fd int, tmp string, dir int, name string, flags uint) error {
	if err := unix.Renameat2(ofs.workFd, tmp, dir, name, flags); err != nil {
		return err
	}
	if sameAt(fd, dir, name) {
		return nil
	}
	var err error
	if flags&unix.RENAME_EXCHANGE != 0 {
		err = unix.Renameat2(ofs.workFd, tmp, dir, name, unix.RENAME_EXCHANGE)
	} else {
		err = unix.Renameat2(dir, name, ofs.workFd, tmp, unix.RENAME_NOREPLACE)
	}
	ofs.opts.Logger.Printf("overlayfuse: %s in the work dir was replaced by someone else before it was renamed into place", tmp)
	if err != nil {
		ofs.opts.Logger.Printf("overlayfuse: putting back what replaced %s: %v", tmp, err)
	}
	return unix.EIO
}

// chownFd and chmodFd change the object fd refers to, any fd, O_PATH
// included; neither follows a symlink that fd is.
func chownFd(fd, uid, gid int) error {
	return unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW)
}

// chmodFd: the /proc name of fd leads to the inode fd holds, whatever
// its directory entry has become meanwhile. Not for symlinks.
func chmodFd(fd int, mode uint32) error {
	return unix.Fchmodat(unix.AT_FDCWD, fdPath(fd), mode&07777, 0)
}
