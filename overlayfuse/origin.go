package overlayfuse

import (
	"bytes"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A copy-up records where the copy came from as kernel overlayfs does, in
// trusted.overlay.origin: a file handle of the lower object with the
// uuid of its filesystem (struct ovl_fb, fs/overlayfs/overlayfs.h). A
// lookup of an upper object reads it back to show the lower inode number,
// so st_ino stays the same across copy-up, across the kernel forgetting
// the inode, and across mounts, ours or the kernel's.

const (
	originXattr = "trusted.overlay.origin"
	// impureXattr marks an upper directory that holds entries with an
	// origin (or redirect): kernel overlayfs then looks up their origin
	// for the d_ino its readdir shows, so that it matches st_ino.
	impureXattr = "trusted.overlay.impure"

	ovlFhVersion = 0
	ovlFhMagic   = 0xfb
	ovlFbHdrLen  = 21 // version, magic, len, flags, type, uuid[16]
)

// fsUUID is the uuid of the filesystem of fd, nil if it tells none.
func fsUUID(fd int) []byte {
	var out struct {
		len  uint8
		uuid [16]byte
	}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fsIocGetfsuuid, uintptr(unsafe.Pointer(&out)))
	if e != 0 || out.len != 16 {
		return nil
	}
	return out.uuid[:]
}

// originOf encodes r, a lower object, as the kernel's origin xattr value.
func originOf(r realRef) []byte {
	if r.layer == nil || r.layer.uuid == nil {
		return nil
	}
	fh := r.fh
	if r.fd >= 0 {
		h, _, err := unix.NameToHandleAt(r.fd, "", unix.AT_EMPTY_PATH)
		if err != nil {
			return nil
		}
		fh = h
	}
	if fh.Size() == 0 || ovlFbHdrLen+fh.Size() > 255 {
		return nil
	}
	b := make([]byte, 0, ovlFbHdrLen+fh.Size())
	b = append(b, ovlFhVersion, ovlFhMagic, byte(ovlFbHdrLen+fh.Size()), 0, byte(fh.Type()))
	b = append(b, r.layer.uuid...)
	return append(b, fh.Bytes()...)
}

// originIno decodes an origin value and returns the overlay inode number
// of the lower object it names, if a lower layer holds it.
func (ofs *overlayFS) originIno(v []byte) (uint64, bool) {
	if len(v) < ovlFbHdrLen || v[0] != ovlFhVersion || v[1] != ovlFhMagic || int(v[2]) != len(v) {
		return 0, false
	}
	uuid := v[5:21]
	fh := unix.NewFileHandle(int32(v[4]), v[ovlFbHdrLen:])
	for _, l := range ofs.lowers {
		if l.uuid == nil || !bytes.Equal(l.uuid, uuid) {
			continue
		}
		fd, err := unix.OpenByHandleAt(l.fd, fh, unix.O_PATH|unix.O_CLOEXEC)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		err = fstat(fd, &st)
		unix.Close(fd)
		if err == nil {
			return ofs.ino(st.Dev, st.Ino), true
		}
	}
	return 0, false
}

// upperIno is the overlay inode number of an upper object found as name
// in dirfd: the lower one it was copied from, if it says so.
func (ofs *overlayFS) upperIno(dirfd int, name string, st *unix.Stat_t) uint64 {
	var buf [ovlFbHdrLen + 128]byte
	n, err := entryXpath(dirfd, name).get(originXattr, buf[:])
	if err == nil {
		if o, ok := ofs.originIno(buf[:n]); ok {
			return o
		}
	}
	return ofs.ino(st.Dev, st.Ino)
}

// setImpure marks upper directory fd impure, as the kernel does when it
// copies up a child with an origin or renames one into it
// (ovl_set_impure). Best effort, as there: it only affects d_ino.
func setImpure(fd int) {
	var buf [1]byte
	if n, err := fgetxattr(fd, impureXattr, buf[:]); err == nil && n == 1 && buf[0] == 'y' {
		return
	}
	_ = fsetxattr(fd, impureXattr, []byte("y"), 0)
}

// markImpureFor marks upper directory dirfd impure if its entry name has
// an origin.
func markImpureFor(dirfd int, name string) {
	if _, err := entryXpath(dirfd, name).get(originXattr, nil); err == nil {
		setImpure(dirfd)
	}
}
