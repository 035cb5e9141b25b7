package overlayfuse

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// lowerRef is one lower layer's real object of a node.
type lowerRef struct {
	layer *layer
	fd    int // O_PATH
}

// node is one overlay inode. It holds O_PATH fds of its real objects, so
// no operation on it resolves a path again.
type node struct {
	fs.Inode
	ofs *overlayFS

	mu sync.Mutex
	// upper is the upper object, -1 while there is none.
	upper int
	// lowers: for a directory, the lower directories merged into it, top
	// first, ending at an opaque one; for anything else the one lower
	// object it shows until copy-up.
	lowers []lowerRef
	// retired fds are no longer used but may still be read by a request
	// in flight; they are closed when the kernel forgets the node.
	retired []int

	// Hard links of a lower file: lowerNlink names exist below, and
	// lowerMoved of them have been linked up or deleted.
	lowerNlink uint32
	lowerMoved uint32
	// aliases are the names this node was looked up under, so that a
	// copy-up links every known name of a lower hard link.
	aliases []alias
}

type alias struct {
	parent *node
	name   string
}

var (
	_ fs.NodeGetattrer   = (*node)(nil)
	_ fs.NodeLookuper    = (*node)(nil)
	_ fs.NodeStatfser    = (*node)(nil)
	_ fs.NodeReadlinker  = (*node)(nil)
	_ fs.NodeOnForgetter = (*node)(nil)
)

// realFd is the object that answers for the node: the upper one once
// there is one.
func (n *node) realFd() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.realFdLocked()
}

func (n *node) realFdLocked() int {
	if n.upper >= 0 {
		return n.upper
	}
	if len(n.lowers) > 0 {
		return n.lowers[0].fd
	}
	return -1
}

func (n *node) upperFd() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.upper
}

func (n *node) hasLower() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.lowers) > 0
}

func (n *node) isDir() bool { return n.StableAttr().Mode&syscall.S_IFMT == syscall.S_IFDIR }

func (n *node) closeFds() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.upper >= 0 {
		unix.Close(n.upper)
		n.upper = -1
	}
	for _, l := range n.lowers {
		unix.Close(l.fd)
	}
	n.lowers = nil
	for _, fd := range n.retired {
		unix.Close(fd)
	}
	n.retired = nil
}

func (n *node) OnForget() {
	n.ofs.unregister(n)
	n.closeFds()
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	var st unix.Stat_t
	if fh, ok := f.(*file); ok {
		if errno := fh.fstat(&st); errno != 0 {
			return errno
		}
	} else if err := fstat(n.realFd(), &st); err != nil {
		return toErrno(err)
	}
	n.fillAttr(&st, &out.Attr)
	return 0
}

// fillAttr turns the real object's stat into the overlay's attributes.
func (n *node) fillAttr(st *unix.Stat_t, a *fuse.Attr) {
	a.FromStat(toSyscallStat(st))
	a.Ino = n.StableAttr().Ino
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.isDir() {
		// As kernel overlayfs: counting the subdirectories of a merged
		// directory is not worth it, and nlink 1 pacifies find.
		if len(n.lowers) > 1 || (n.upper >= 0 && len(n.lowers) > 0) {
			a.Nlink = 1
		}
		return
	}
	if n.lowerNlink > 0 {
		nlink := n.lowerNlink - n.lowerMoved
		if n.upper >= 0 {
			nlink += a.Nlink
		}
		a.Nlink = nlink
	}
}

func toSyscallStat(st *unix.Stat_t) *syscall.Stat_t {
	return &syscall.Stat_t{
		Dev: st.Dev, Ino: st.Ino, Nlink: st.Nlink, Mode: st.Mode, Uid: st.Uid, Gid: st.Gid,
		Rdev: st.Rdev, Size: st.Size, Blksize: st.Blksize, Blocks: st.Blocks,
		Atim: syscall.Timespec(st.Atim), Mtim: syscall.Timespec(st.Mtim), Ctim: syscall.Timespec(st.Ctim),
	}
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var s unix.Statfs_t
	if err := unix.Fstatfs(n.ofs.topLayer().fd, &s); err != nil {
		return toErrno(err)
	}
	out.Blocks, out.Bfree, out.Bavail = s.Blocks, s.Bfree, s.Bavail
	out.Files, out.Ffree = s.Files, s.Ffree
	out.Bsize, out.Frsize = uint32(s.Bsize), uint32(s.Frsize)
	out.NameLen = uint32(s.Namelen)
	return 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	buf := make([]byte, 256)
	for {
		sz, err := unix.Readlinkat(n.realFd(), "", buf)
		if err != nil {
			return nil, toErrno(err)
		}
		if sz < len(buf) {
			return buf[:sz], 0
		}
		buf = make([]byte, len(buf)*4)
	}
}

// entry is what the layers hold under one name of a merged directory.
type entry struct {
	st     unix.Stat_t // the topmost object
	upper  int         // O_PATH fd, -1 if the upper has none
	lowers []lowerRef
	// lowerSt is the topmost lower object's stat.
	lowerSt unix.Stat_t
	// whiteout: the upper (or a lower) layer deletes the name;
	// upperWhiteout: the upper one does.
	whiteout, upperWhiteout bool
}

func (e *entry) exists() bool { return e.upper >= 0 || len(e.lowers) > 0 }

func (e *entry) release() {
	if e.upper >= 0 {
		unix.Close(e.upper)
		e.upper = -1
	}
	for _, l := range e.lowers {
		unix.Close(l.fd)
	}
	e.lowers = nil
}

func isWhiteout(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// resolve finds name in the layers of directory n: the upper first, then
// each lower until a whiteout, an opaque directory or a non-directory
// ends the merge.
func (n *node) resolve(name string) (e entry, errno syscall.Errno) {
	n.mu.Lock()
	upperDir := n.upper
	lowers := n.lowers
	n.mu.Unlock()
	return resolveIn(upperDir, lowers, name)
}

// resolveIn is resolve over explicit layer directories.
func resolveIn(upperDir int, lowers []lowerRef, name string) (e entry, errno syscall.Errno) {
	e.upper = -1
	isDir := false
	if upperDir >= 0 {
		fd, err := openPath(upperDir, name)
		switch {
		case err == unix.ENOENT:
		case err != nil:
			return e, toErrno(err)
		default:
			if err := fstat(fd, &e.st); err != nil {
				unix.Close(fd)
				return e, toErrno(err)
			}
			if isWhiteout(&e.st) {
				unix.Close(fd)
				e.whiteout, e.upperWhiteout = true, true
				return e, syscall.ENOENT
			}
			e.upper = fd
			if e.st.Mode&unix.S_IFMT != unix.S_IFDIR {
				return e, 0
			}
			if opaque, _ := isOpaque(fd); opaque {
				return e, 0
			}
			isDir = true
		}
	}
	for _, l := range lowers {
		fd, err := openPath(l.fd, name)
		if err == unix.ENOENT {
			continue
		}
		if err != nil {
			e.release()
			return e, toErrno(err)
		}
		var st unix.Stat_t
		if err := fstat(fd, &st); err != nil {
			unix.Close(fd)
			e.release()
			return e, toErrno(err)
		}
		if isWhiteout(&st) {
			unix.Close(fd)
			if !e.exists() {
				e.whiteout = true
				return e, syscall.ENOENT
			}
			break
		}
		dir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		if e.exists() && (!isDir || !dir) {
			// A non-directory ends the merge, and is never looked through.
			unix.Close(fd)
			break
		}
		if len(e.lowers) == 0 {
			e.lowerSt = st
		}
		if !e.exists() {
			e.st = st
		}
		e.lowers = append(e.lowers, lowerRef{layer: l.layer, fd: fd})
		if !dir {
			break
		}
		isDir = true
		if opaque, _ := isOpaque(fd); opaque {
			break
		}
	}
	if !e.exists() {
		return e, syscall.ENOENT
	}
	return e, 0
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if len(name) > 255 {
		return nil, syscall.ENAMETOOLONG
	}
	e, errno := n.resolve(name)
	if errno != 0 {
		return nil, errno
	}
	child, errno := n.ofs.nodeFor(ctx, n, name, &e)
	if errno != 0 {
		return nil, errno
	}
	var st unix.Stat_t
	if err := fstat(child.realFd(), &st); err != nil {
		return nil, toErrno(err)
	}
	child.fillAttr(&st, &out.Attr)
	return child.EmbeddedInode(), 0
}

// nodeFor returns the node for an entry found under parent/name: the live
// node of the same inode if there is one (a hard link, or a node the
// kernel still knows), otherwise a new one that takes e's fds.
func (ofs *overlayFS) nodeFor(ctx context.Context, parent *node, name string, e *entry) (*node, syscall.Errno) {
	var ino uint64
	if e.upper >= 0 {
		ino = ofs.alias(ofs.ino(e.st.Dev, e.st.Ino))
	} else {
		ino = ofs.ino(e.lowerSt.Dev, e.lowerSt.Ino)
	}
	mode := e.st.Mode & unix.S_IFMT

	ofs.mu.Lock()
	if old := ofs.nodes[ino]; old != nil && old.StableAttr().Mode == mode && !old.Forgotten() {
		ofs.mu.Unlock()
		e.release()
		if mode != unix.S_IFDIR {
			old.addAlias(parent, name)
			if errno := old.linkUp(parent, name); errno != 0 {
				return nil, errno
			}
		}
		return old, 0
	}
	n := &node{ofs: ofs, upper: e.upper, lowers: e.lowers}
	if mode != unix.S_IFDIR && len(e.lowers) > 0 && e.lowerSt.Nlink > 1 {
		n.lowerNlink = uint32(e.lowerSt.Nlink)
		if e.upper >= 0 {
			n.lowerMoved = 1
		}
		n.aliases = []alias{{parent, name}}
	}
	if mode != unix.S_IFDIR && e.upper >= 0 {
		// The upper object hides any lower one for good.
		for _, l := range n.lowers {
			unix.Close(l.fd)
		}
		n.lowers = nil
	}
	ofs.nodes[ino] = n
	ofs.mu.Unlock()
	parent.NewInode(ctx, n, fs.StableAttr{Mode: mode, Ino: ino, Gen: 1})
	return n, 0
}

func (n *node) addAlias(parent *node, name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lowerNlink == 0 {
		return
	}
	for _, a := range n.aliases {
		if a.parent == parent && a.name == name {
			return
		}
	}
	n.aliases = append(n.aliases, alias{parent, name})
}
