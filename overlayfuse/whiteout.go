package overlayfuse

import (
	"strings"

	"golang.org/x/sys/unix"
)

// Kernel overlayfs' private attributes. Every trusted.overlay.* name is
// private: hidden from and unsettable through the mount.
const (
	privateXattrPrefix = "trusted.overlay."
	opaqueXattr        = "trusted.overlay.opaque"
)

func isPrivateXattr(name string) bool { return strings.HasPrefix(name, privateXattrPrefix) }

// isOpaque reports whether directory fd hides the layers below it.
func isOpaque(fd int) (bool, error) {
	var buf [2]byte
	n, err := fgetxattr(fd, opaqueXattr, buf[:])
	if err != nil {
		if err == unix.ENODATA || err == unix.ENOTSUP || err == unix.ERANGE {
			return false, nil
		}
		return false, err
	}
	return n == 1 && buf[0] == 'y', nil
}

func setOpaque(fd int) error {
	return fsetxattr(fd, opaqueXattr, []byte("y"), 0)
}

// mkWhiteout makes the kernel's whiteout, a 0/0 character device.
func mkWhiteout(dirfd int, name string) error {
	return unix.Mknodat(dirfd, name, unix.S_IFCHR, 0)
}

// whiteout makes a whiteout at name in dirfd, which must be free: a hard
// link of the mount's shared whiteout in the work dir, as kernel overlayfs
// does, since a new device inode for every deleted name costs many times
// a link (rm -rf of a lower tree is all whiteouts). It links from an fd of
// the shared whiteout, never by its name, which anyone who can write the
// work dir could have swapped for another file.
func (ofs *overlayFS) whiteout(dirfd int, name string) error {
	ofs.whMu.Lock()
	defer ofs.whMu.Unlock()
	for range 2 {
		if ofs.whFd < 0 {
			tmp := ofs.tmpName()
			if err := mkWhiteout(ofs.workFd, tmp); err != nil {
				return err
			}
			fd, err := openBuilt(ofs.workFd, tmp, unix.S_IFCHR, 0)
			if err != nil {
				return mkWhiteout(dirfd, name)
			}
			ofs.whFd = fd
		}
		err := unix.Linkat(ofs.whFd, "", dirfd, name, unix.AT_EMPTY_PATH)
		switch err {
		case nil:
			return nil
		case unix.EMLINK, unix.ENOENT:
			// Full, or gone: make another.
			unix.Close(ofs.whFd)
			ofs.whFd = -1
		default:
			return mkWhiteout(dirfd, name)
		}
	}
	return mkWhiteout(dirfd, name)
}

// swapForWhiteout puts a whiteout in place of name in dirfd, atomically,
// and returns the name in the work dir the old entry went to.
func (ofs *overlayFS) swapForWhiteout(dirfd int, name string) (string, error) {
	tmp := ofs.tmpName()
	err := unix.Renameat2(dirfd, name, ofs.workFd, tmp, unix.RENAME_WHITEOUT)
	if err != unix.EINVAL {
		return tmp, err
	}
	// No RENAME_WHITEOUT on this filesystem: exchange with a whiteout
	// made in the work dir, then check that it was ours that went.
	if err := ofs.whiteout(ofs.workFd, tmp); err != nil {
		return "", err
	}
	var st unix.Stat_t
	if err := unix.Renameat2(ofs.workFd, tmp, dirfd, name, unix.RENAME_EXCHANGE); err != nil {
		_ = unix.Unlinkat(ofs.workFd, tmp, 0) // best effort: the next mount empties the work dir
		return "", err
	}
	if lstatAt(dirfd, name, &st) != nil || !isWhiteout(&st) {
		if err := unix.Renameat2(ofs.workFd, tmp, dirfd, name, unix.RENAME_EXCHANGE); err != nil {
			ofs.opts.Logger.Printf("overlayfuse: putting back what replaced the whiteout %s: %v", tmp, err)
		}
		return "", unix.EIO
	}
	return tmp, nil
}

// removeChildren removes everything below directory fd, never following a
// symlink.
func removeChildren(fd int) error {
	dfd, err := openBeneath(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	names, err := readNames(dfd)
	if err != nil {
		return err
	}
	for _, de := range names {
		if err := removeAt(dfd, de.name, de.typ == unix.DT_DIR); err != nil {
			return err
		}
	}
	return nil
}

// removeAt removes name in dirfd, a directory with all it holds.
func removeAt(dirfd int, name string, dir bool) error {
	if !dir {
		err := unix.Unlinkat(dirfd, name, 0)
		if err != unix.EISDIR {
			return err
		}
	}
	err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
	if err != unix.ENOTEMPTY && err != unix.EEXIST {
		return err
	}
	cfd, err := openBeneath(dirfd, name, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	err = removeChildren(cfd)
	unix.Close(cfd)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}
