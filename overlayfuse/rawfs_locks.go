package overlayfuse

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Lock requests of an open file go to the mount's lock tables (locks.go)
// under the node's inode number.
//
// POSIX semantics want an owner's locks on a file to go when that process
// closes any fd of the file. The kernel says so only by the lock owner in
// FLUSH, which the fs API does not show; so rawFS answers FLUSH itself.
// To keep the round trip off most closes, opens of a file that holds no
// POSIX lock get FOPEN_NOFLUSH, and a handle's Release drops the locks
// taken through it, as the close of that handle would have.

var (
	_ fs.FileGetlker  = (*file)(nil)
	_ fs.FileSetlker  = (*file)(nil)
	_ fs.FileSetlkwer = (*file)(nil)
)

// lockOwners are the owners that took locks through one handle.
type lockOwners struct {
	mu    sync.Mutex
	posix map[uint64]bool
	flock map[uint64]bool
}

func (o *lockOwners) add(owner uint64, flock bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	m := &o.posix
	if flock {
		m = &o.flock
	}
	if *m == nil {
		*m = map[uint64]bool{}
	}
	(*m)[owner] = true
}

// Flush drops the closing process's POSIX locks on the file. An owner
// without any is answered at once; otherwise the file's inode number,
// which keys the locks, comes from a GETATTR of the same handle.
func (r *rawFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	if !r.ofs.locks.ownerHoldsPosix(in.LockOwner) {
		return fuse.OK
	}
	var out fuse.AttrOut
	ga := fuse.GetAttrIn{InHeader: in.InHeader, Flags_: fuse.FUSE_GETATTR_FH, Fh_: in.Fh}
	if s := r.RawFileSystem.GetAttr(cancel, &ga, &out); s != fuse.OK {
		return s
	}
	r.ofs.locks.unlockOwner(out.Ino, in.LockOwner, false)
	return fuse.OK
}

func (f *file) ino() uint64 { return f.n.ino }

func (f *file) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	f.n.ofs.locks.getlk(f.ino(), owner, lk, flags&fuse.FUSE_LK_FLOCK != 0, out)
	return 0
}

func (f *file) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.setlk(ctx, owner, lk, flags, false)
}

func (f *file) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.setlk(ctx, owner, lk, flags, true)
}

func (f *file) setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, wait bool) syscall.Errno {
	flock := flags&fuse.FUSE_LK_FLOCK != 0
	// Recorded first, so that a Release racing with the lock drops it.
	f.owners.add(owner, flock)
	return f.n.ofs.locks.setlk(ctx, f.ino(), owner, lk, flock, wait)
}

// releaseLocks drops what was locked through f when it is released: its
// flock locks, and the POSIX locks of the owners that used it, whose close
// of it the kernel may not have sent (FOPEN_NOFLUSH).
func (f *file) releaseLocks() {
	f.owners.mu.Lock()
	posix, flock := f.owners.posix, f.owners.flock
	f.owners.posix, f.owners.flock = nil, nil
	f.owners.mu.Unlock()
	ino := f.ino()
	for o := range posix {
		f.n.ofs.locks.unlockOwner(ino, o, false)
	}
	for o := range flock {
		f.n.ofs.locks.unlockOwner(ino, o, true)
	}
}

// openFlags are the FOPEN flags of a new handle of n: the kernel need not
// send FLUSH at its close while the file holds no POSIX lock.
func (n *node) openFlags() uint32 {
	flags := uint32(fuse.FOPEN_KEEP_CACHE)
	if !n.ofs.locks.holdsPosix(n.ino) {
		flags |= fuse.FOPEN_NOFLUSH
	}
	return flags
}
