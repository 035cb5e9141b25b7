package overlayfuse

import (
	"context"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// node is one overlay inode. It holds its real objects as realRefs, so no
// operation on it resolves a path again.
type node struct {
	fs.Inode
	ofs *overlayFS
	// ino is the overlay inode number (st_ino); the FUSE node id is
	// StableAttr().Ino (nodeid.go).
	ino uint64

	mu sync.Mutex
	// upper is the upper object, if any.
	upper realRef
	// lowers: for a directory, the lower directories merged into it, top
	// first, ending at an opaque one; for anything else the one lower
	// object it shows until copy-up.
	lowers []realRef
	// fds holds every fd the node ever opened, for its cleanup.
	fds *fdList

	// Hard links of a lower file: lowerNlink names exist below, and
	// lowerMoved of them have been linked up or deleted.
	lowerNlink uint32
	lowerMoved uint32
	// aliases are the names this node was looked up under, so that a
	// copy-up links every known name of a lower hard link.
	aliases []alias

	// xattrs caches the attribute names of the real object.
	xattrs      []string
	xattrsKnown bool

	// bornUpper: the node showed an upper file from the start.
	bornUpper bool
	// ptOpens counts open handles passed through, ptLowerOpens those of
	// them whose backing file is the lower one, cachedOpens the others.
	ptOpens, ptLowerOpens, cachedOpens int
	// retiredFor are the threads whose open retired the node.
	retiredFor map[uint32]struct{}
	// stale: retired (passthrough.go); lookups make a new node instead.
	stale bool
	// prot: the immutable and append-only flags (fileattr.go).
	prot uint32
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

// real is the object that answers for the node: the upper one once there
// is one.
func (n *node) real() realRef {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.realLocked()
}

func (n *node) realLocked() realRef {
	if n.upper.valid() {
		return n.upper
	}
	if len(n.lowers) > 0 {
		return n.lowers[0]
	}
	return noRef
}

func (n *node) upperRef() realRef {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.upper
}

// upperDirFd is the O_PATH fd of a directory's upper object, -1 if none,
// and the function that releases it.
func (n *node) upperDirFd() (int, func(), error) {
	n.mu.Lock()
	up := n.upper
	n.mu.Unlock()
	if !up.valid() {
		return -1, nop, nil
	}
	return up.pathFd()
}

func (n *node) hasUpper() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.upper.valid()
}

func (n *node) isDir() bool { return n.StableAttr().Mode&syscall.S_IFMT == syscall.S_IFDIR }

// OnForget takes the node out of lookups and closes its cached directory
// fds. Its refs stay usable: go-fuse may still hand the node back to the
// kernel for a lookup that found it just before (fs.NodeOnForgetter).
// Fds kept for the ref's life close once the node is garbage (see fdList).
func (n *node) OnForget() {
	n.ofs.unregister(n)
	n.dropFds()
	collectSoon()
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	var st unix.Stat_t
	var upper bool
	if fh, ok := f.(*file); ok {
		var errno syscall.Errno
		if upper, errno = fh.fstat(&st); errno != 0 {
			return errno
		}
	} else {
		r := n.real()
		upper = r.inUpper()
		if err := r.stat(&st); err == unix.ESTALE {
			// The object lost its last name since the kernel looked it
			// up, and its handle opens nothing: the name is gone.
			return syscall.ENOENT
		} else if err != nil {
			return n.ofs.toErrno(err)
		}
	}
	n.fillAttr(&st, upper, &out.Attr)
	return 0
}

// fillAttr turns the real object's stat, of the upper layer's object or a
// lower one's, into the overlay's attributes.
func (n *node) fillAttr(st *unix.Stat_t, upper bool, a *fuse.Attr) {
	a.FromStat(toSyscallStat(st))
	// The bridge puts the node id here anyway; requestFS puts the
	// inode number back where the two differ (nodeid.go).
	a.Ino = n.StableAttr().Ino
	if upper {
		n.ofs.ids.showUpper(a)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.isDir() {
		// As kernel overlayfs: counting the subdirectories of a merged
		// directory is not worth it, and nlink 1 pacifies find.
		if len(n.lowers) > 1 || (n.upper.valid() && len(n.lowers) > 0) {
			a.Nlink = 1
		}
		return
	}
	if n.lowerNlink > 0 {
		nlink := n.lowerNlink - n.lowerMoved
		if n.upper.valid() {
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
		return n.ofs.toErrno(err)
	}
	out.Blocks, out.Bfree, out.Bavail = s.Blocks, s.Bfree, s.Bavail
	out.Files, out.Ffree = s.Files, s.Ffree
	out.Bsize, out.Frsize = uint32(s.Bsize), uint32(s.Frsize)
	out.NameLen = uint32(s.Namelen)
	return 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	fd, done, err := n.real().pathFd()
	if err != nil {
		return nil, n.ofs.toErrno(err)
	}
	defer done()
	buf := make([]byte, 256)
	for {
		sz, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return nil, n.ofs.toErrno(err)
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
	upper  realRef
	lowers []realRef
	// lowerSt is the topmost lower object's stat.
	lowerSt unix.Stat_t
	// whiteout: the upper (or a lower) layer deletes the name;
	// upperWhiteout: the upper one does.
	whiteout, upperWhiteout bool
	// created: made just now through the mount, so no copy of anything.
	created bool
}

func (e *entry) exists() bool { return e.upper.valid() || len(e.lowers) > 0 }

func (e *entry) isDir() bool { return e.st.Mode&unix.S_IFMT == unix.S_IFDIR }

func (e *entry) release() {
	e.upper.close()
	for i := range e.lowers {
		e.lowers[i].close()
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
	upper := n.upper
	lowers := n.lowers
	n.mu.Unlock()
	return resolveIn(upper, lowers, name)
}

// resolveIn is resolve over explicit layer directories. Each step looks at
// one name in one directory fd and follows nothing.
func resolveIn(upper realRef, lowers []realRef, name string) (e entry, errno syscall.Errno) {
	e.upper = noRef
	isDir := false
	if upper.valid() {
		err := upper.lstatAt(name, &e.st)
		switch {
		case err == unix.ENOENT:
		case err != nil:
			return e, toErrno(err)
		case isWhiteout(&e.st):
			e.whiteout, e.upperWhiteout = true, true
			return e, syscall.ENOENT
		default:
			r, err := upper.refAt(name, &e.st)
			if err != nil {
				return e, toErrno(err)
			}
			e.upper = r
			if !e.isDir() {
				return e, 0
			}
			opaque, err := r.isOpaque()
			if err != nil {
				e.release()
				return e, toErrno(err)
			}
			if opaque {
				return e, 0
			}
			isDir = true
		}
	}
	for _, l := range lowers {
		var st unix.Stat_t
		err := l.lstatAt(name, &st)
		if err == unix.ENOENT {
			continue
		}
		if err != nil {
			e.release()
			return e, toErrno(err)
		}
		if isWhiteout(&st) {
			if !e.exists() {
				e.whiteout = true
				return e, syscall.ENOENT
			}
			break
		}
		dir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		if e.exists() && (!isDir || !dir) {
			// A non-directory ends the merge, and is never looked through.
			break
		}
		r, err := l.refAt(name, &st)
		if err != nil {
			e.release()
			return e, toErrno(err)
		}
		if len(e.lowers) == 0 {
			e.lowerSt = st
		}
		if !e.exists() {
			e.st = st
		}
		e.lowers = append(e.lowers, r)
		if !dir {
			break
		}
		isDir = true
		opaque, err := r.isOpaque()
		if err != nil {
			e.release()
			return e, toErrno(err)
		}
		if opaque {
			break
		}
	}
	if !e.exists() {
		return e, syscall.ENOENT
	}
	return e, 0
}

// entryNode gives the node of e, name resolved in n, and its attributes
// in out, as Lookup and newChild end.
func (n *node) entryNode(ctx context.Context, name string, e *entry, out *fuse.EntryOut) (*node, syscall.Errno) {
	st, upper := e.st, e.upper.valid()
	child, fresh, errno := n.ofs.nodeFor(ctx, n, name, e)
	if errno != 0 {
		return nil, errno
	}
	if !fresh {
		// A known node: its real object's attributes, not the entry's;
		// the entry's if that object lost its last name just now.
		r := child.real()
		if err := r.stat(&st); err != nil && err != unix.ESTALE {
			return nil, n.ofs.toErrno(err)
		} else if err != nil {
			st = e.st
		} else {
			upper = r.inUpper()
		}
	}
	child.fillAttr(&st, upper, &out.Attr)
	return child, 0
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if n.ofs.restoring {
		return n.lookupGhost(ctx, name, out)
	}
	if name == n.ofs.panicName {
		panic("lookup of " + name)
	}
	if len(name) > 255 {
		return nil, syscall.ENAMETOOLONG
	}
	e, errno := n.resolve(name)
	if errno != 0 {
		return nil, errno
	}
	child, errno := n.entryNode(ctx, name, &e, out)
	if errno != 0 {
		return nil, errno
	}
	if isSetid(out.Attr.Mode) {
		// READDIRPLUS puts the bridge's default over a zero attribute
		// timeout (rawfs.go): take the shortest it keeps.
		out.SetAttrTimeout(time.Nanosecond)
	}
	return child.EmbeddedInode(), 0
}

// nodeFor returns the node for an entry found under parent/name: the live
// node of the same inode if there is one (a hard link, or a node the
// kernel still knows), otherwise a fresh one that takes e's fds.
func (ofs *overlayFS) nodeFor(ctx context.Context, parent *node, name string, e *entry) (n *node, fresh bool, errno syscall.Errno) {
	var ino uint64
	switch {
	case e.created:
		ino = ofs.ino(e.st.Dev, e.st.Ino)
	case e.upper.valid():
		pfd, done, err := parent.upperDirFd()
		if err != nil {
			return nil, false, ofs.toErrno(err)
		}
		ino = ofs.upperIno(pfd, name, &e.st)
		done()
	default:
		ino = ofs.ino(e.lowerSt.Dev, e.lowerSt.Ino)
	}
	mode := e.st.Mode & unix.S_IFMT

	ofs.mu.Lock()
	old := ofs.nodes[ino]
	if old != nil && old.StableAttr().Mode == mode && !old.Forgotten() && !old.isStale() && old.shows(e) {
		ofs.mu.Unlock()
		e.release()
		if mode != unix.S_IFDIR {
			old.addAlias(parent, name)
			if errno := old.linkUp(parent, name); errno != 0 {
				return nil, false, errno
			}
		}
		return old, false, 0
	}
	gen := max(ofs.gens[ino], 1)
	if old != nil && !old.isStale() && gen <= old.StableAttr().Gen {
		// The inode number came back for another file.
		gen = old.StableAttr().Gen + 1
		ofs.gens[ino] = gen
	}
	n = ofs.newNode(e.upper, e.lowers)
	n.bornUpper = e.upper.valid()
	if e.created {
		n.prot = protKnown // made through the mount: no flags
	}
	if mode != unix.S_IFDIR && len(e.lowers) > 0 && e.lowerSt.Nlink > 1 && n.lowerNlink == 0 {
		n.lowerNlink = uint32(e.lowerSt.Nlink)
		if e.upper.valid() {
			n.lowerMoved = 1
		}
		n.aliases = []alias{{parent, name}}
	}
	if old != nil && old.isStale() {
		// The successor of a retired node keeps its hard link count.
		old.mu.Lock()
		n.lowerNlink, n.lowerMoved = old.lowerNlink, old.lowerMoved
		n.aliases = append([]alias(nil), old.aliases...)
		old.mu.Unlock()
	}
	if mode != unix.S_IFDIR && e.upper.valid() {
		// The upper object hides any lower one for good.
		n.lowers = nil
	}
	ofs.nodes[ino] = n
	ofs.mu.Unlock()
	n.ino = ino
	parent.NewInode(ctx, n, fs.StableAttr{Mode: mode, Ino: ofs.nodeIDLocked(ino, gen), Gen: gen})
	return n, true, 0
}

func (n *node) isStale() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stale
}

// shows reports whether live node n stands for the object e found: the
// same real object, or the upper copy of n's lower one.
func (n *node) shows(e *entry) bool {
	r := n.real()
	if e.upper.valid() {
		return r.same(e.upper)
	}
	return len(e.lowers) > 0 && (r.same(e.lowers[0]) || n.hasUpper())
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
