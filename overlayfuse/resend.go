package overlayfuse

import (
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// A request the kernel sends again (FUSE_NOTIFY_RESEND, after a server
// died with it unanswered) carries this bit in its unique id. The dead
// server may have done it already: a request that cannot be done twice
// answers what it would have answered the first time when what it asked
// for is there (docs/restart.md).
const resendBit = 1 << 63

func resent(h *fuse.InHeader) bool { return h.Unique&resendBit != 0 }

// resentMade answers a resent MKNOD, MKDIR or SYMLINK whose name exists
// with an object of the asked type: with that entry.
func (r *requestFS) resentMade(c <-chan struct{}, s fuse.Status, h *fuse.InHeader, name string, mode uint32, out *fuse.EntryOut) fuse.Status {
	if s != fuse.Status(syscall.EEXIST) || !resent(h) {
		return s
	}
	if r.next.Lookup(c, h, name, out) != fuse.OK || out.NodeId == 0 {
		return s
	}
	if out.Attr.Mode&syscall.S_IFMT != mode&syscall.S_IFMT {
		r.next.Forget(out.NodeId, 1)
		return s
	}
	return fuse.OK
}

// resentGone answers a resent UNLINK or RMDIR of a name already gone.
func (r *requestFS) resentGone(s fuse.Status, h *fuse.InHeader) fuse.Status {
	if s == fuse.ENOENT && resent(h) {
		return fuse.OK
	}
	return s
}

// resentRename answers a resent RENAME whose source is gone and whose
// target is there.
func (r *requestFS) resentRename(c <-chan struct{}, s fuse.Status, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	if s != fuse.ENOENT || !resent(&in.InHeader) {
		return s
	}
	h := in.InHeader
	h.NodeId = in.Newdir
	var out fuse.EntryOut
	if r.next.Lookup(c, &h, newName, &out) != fuse.OK || out.NodeId == 0 {
		return s
	}
	r.next.Forget(out.NodeId, 1)
	return fuse.OK
}

// resentLink answers a resent LINK whose name is already that node.
func (r *requestFS) resentLink(c <-chan struct{}, s fuse.Status, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	if s != fuse.Status(syscall.EEXIST) || !resent(&in.InHeader) {
		return s
	}
	if r.next.Lookup(c, &in.InHeader, name, out) != fuse.OK || out.NodeId == 0 {
		return s
	}
	if out.NodeId != in.Oldnodeid {
		r.next.Forget(out.NodeId, 1)
		return s
	}
	return fuse.OK
}

// resentCreate answers a resent CREATE whose file exists (made by the
// dead server, or the request would not have been sent): it opens it.
func (r *requestFS) resentCreate(c <-chan struct{}, s fuse.Status, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	if s != fuse.Status(syscall.EEXIST) || !resent(&in.InHeader) {
		return s
	}
	if r.next.Lookup(c, &in.InHeader, name, &out.EntryOut) != fuse.OK || out.NodeId == 0 {
		return s
	}
	if out.Attr.Mode&syscall.S_IFMT != syscall.S_IFREG {
		r.next.Forget(out.NodeId, 1)
		return s
	}
	open := fuse.OpenIn{InHeader: in.InHeader, Flags: in.Flags &^ (unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC)}
	open.NodeId = out.NodeId
	if st := r.next.Open(c, &open, &out.OpenOut); st != fuse.OK {
		r.next.Forget(out.NodeId, 1)
		return st
	}
	return fuse.OK
}

// payDeficit takes the lookups the kernel counts and the bridge does not
// (a restored node: carriedState.deficit) off a FORGET of nlookup.
func (r *requestFS) payDeficit(id, nlookup uint64) uint64 {
	r.carry.mu.Lock()
	defer r.carry.mu.Unlock()
	d := r.carry.deficit[id]
	if d == 0 {
		return nlookup
	}
	pay := min(d, nlookup)
	if d == pay {
		delete(r.carry.deficit, id)
	} else {
		r.carry.deficit[id] = d - pay
	}
	return nlookup - pay
}

// useCarriedBacking answers an open passed through of a node whose kernel
// inode is tied to the backing file an earlier server registered: with
// that one, or the kernel refuses the open (EBUSY).
func (r *requestFS) useCarriedBacking(id uint64, out *fuse.OpenOut) {
	r.carry.mu.Lock()
	defer r.carry.mu.Unlock()
	b := r.carry.backing[id]
	if b == nil {
		return
	}
	out.BackingID = b.id
	b.users++
	r.carry.backingOf[out.Fh] = id
}

// dropCarried forgets released handle fh; the last user of a carried
// backing id closes it.
func (r *requestFS) dropCarried(fh uint64) {
	r.carry.mu.Lock()
	delete(r.carry.fhs, fh)
	id, ok := r.carry.backingOf[fh]
	if !ok {
		r.carry.mu.Unlock()
		return
	}
	delete(r.carry.backingOf, fh)
	b := r.carry.backing[id]
	b.users--
	if b.users > 0 {
		r.carry.mu.Unlock()
		return
	}
	delete(r.carry.backing, id)
	r.carry.mu.Unlock()
	if srv := r.ofs.server; srv != nil {
		if errno := srv.UnregisterBackingFd(b.id); errno != 0 {
			r.ofs.opts.Logger.Printf("overlayfuse: close carried backing id %d: %v", b.id, errno)
		}
	}
}
