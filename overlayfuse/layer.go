package overlayfuse

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// layer is one directory of the overlay, held open by an O_PATH fd of its
// root: every later access walks from that fd, never from a path string.
type layer struct {
	path  string
	fd    int
	dev   uint64
	upper bool
	// uuid of the filesystem, for origin xattrs (origin.go); nil if unknown.
	uuid []byte
	// handles: open_by_handle_at serves the layer's directories, so
	// their fds can be closed and opened again (fdcache.go); mountID is
	// the mount it decodes them on.
	handles bool
	mountID int
}

func openLayer(path string, upper bool) (*layer, error) {
	var fd int
	var err error
	if upper {
		// O_RDONLY, not O_PATH: open_by_handle_at takes it as its mount fd.
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	} else {
		fd, err = openReadOnlyTree(path)
	}
	if err != nil {
		return nil, fmt.Errorf("open layer %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat layer %s: %w", path, err)
	}
	l := &layer{path: path, fd: fd, dev: uint64(st.Dev), upper: upper, uuid: fsUUID(fd)}
	l.handles, l.mountID = hasHandles(fd)
	return l, nil
}

// hasHandles reports whether directory fd, a layer root, can be named by
// a file handle and opened by it again (not every filesystem can), and
// its mount id.
func hasHandles(fd int) (bool, int) {
	fh, mnt, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		return false, 0
	}
	pfd, err := openByHandle(&layer{fd: fd}, fh, unix.O_PATH)
	if err != nil {
		return false, 0
	}
	unix.Close(pfd)
	return true, mnt
}

func (l *layer) close() {
	if l != nil && l.fd >= 0 {
		dirFds.purge(l)
		unix.Close(l.fd)
		l.fd = -1
	}
}

// openReadOnlyTree opens a lower layer through a private, detached,
// read-only clone of its mount, so that a write that ever reached a lower
// file through us (a passthrough backing file reopened for writing, say)
// fails with EROFS instead of changing a shared image layer. The clone is
// in no mount table and goes away with the fd. Without the privilege for
// it, the layer is opened as it is.
func openReadOnlyTree(path string) (int, error) {
	tree, err := unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err == nil {
		err = unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
		if err == nil {
			fd, err := unix.Openat(tree, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			unix.Close(tree)
			if err == nil {
				return fd, nil
			}
		} else {
			unix.Close(tree)
		}
	}
	return unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}
