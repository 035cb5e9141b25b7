package overlayfuse

import (
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// requestFS is the first stop of every request, before go-fuse's node
// bridge (through rawFS). It
//   - counts requests in progress, and parks new ones once the server is
//     stopped for a hand-over: the kernel then sends them to the next
//     server (docs/restart.md);
//   - recovers a panic in one request, logs it with the mount and the
//     operation and answers EIO, so no other request or mount notices;
//   - gives the kernel file handles of its own (the server's epoch in
//     the high half) and translates those of an earlier server;
//   - keeps the state file's node and handle tables;
//   - puts the inode number back where a node's id differs (nodeid.go);
//   - times requests for Options.Metrics.
type requestFS struct {
	next fuse.RawFileSystem
	ofs  *overlayFS
	m    Metrics

	inflight atomic.Int64
	stopped  atomic.Bool
	drained  chan struct{}

	// epoch is the high half of this server's handles.
	epoch uint64
	// carried is set when state of an earlier server was taken over:
	// only then are the maps below consulted.
	carried atomic.Bool
	carry   carriedState
}

// carriedState is what the server took over from an earlier one.
type carriedState struct {
	mu sync.Mutex
	// fhs maps the earlier servers' handles to the bridge's.
	fhs map[uint64]uint64
	// deficit is, per restored node, how many more lookups the kernel
	// counts than the bridge: the restore looked each node up once.
	deficit map[uint64]uint64
	// backing is, per node, the passthrough backing id the kernel's inode
	// is tied to while handles opened on it are live, and their number.
	backing map[uint64]*carriedBacking
	// backingOf maps a handle to the node whose carried backing it uses.
	backingOf map[uint64]uint64
}

type carriedBacking struct {
	id    int32
	users int
}

func newRequestFS(next fuse.RawFileSystem, ofs *overlayFS, m Metrics) *requestFS {
	return &requestFS{next: next, ofs: ofs, m: m, drained: make(chan struct{}, 1), epoch: ofs.state.epoch()}
}

// park never returns: the request stays unanswered in the kernel, which
// sends it again to the next server (FUSE_NOTIFY_RESEND).
var park = make(chan struct{})

func (r *requestFS) begin() time.Time {
	r.inflight.Add(1)
	if r.stopped.Load() {
		r.leave()
		<-park
	}
	if r.m != nil {
		return time.Now()
	}
	return time.Time{}
}

func (r *requestFS) leave() {
	if r.inflight.Add(-1) == 0 && r.stopped.Load() {
		select {
		case r.drained <- struct{}{}:
		default:
		}
	}
}

// end is deferred by every request: it recovers a panic, records metrics
// and leaves.
func (r *requestFS) end(op string, t time.Time, s *fuse.Status) {
	if p := recover(); p != nil {
		r.ofs.opts.Logger.Printf("overlayfuse: %s: panic in %s (answered EIO): %v\n%s", r.ofs.mountpoint, op, p, debug.Stack())
		*s = fuse.EIO
	}
	if r.m != nil {
		var errno syscall.Errno
		if *s > 0 {
			errno = syscall.Errno(*s)
		}
		r.m.Op(op, time.Since(t), errno)
	}
	r.leave()
}

// stop parks every new request and waits for those in progress.
func (r *requestFS) stop() {
	r.stopped.Store(true)
	for r.inflight.Load() > 0 {
		<-r.drained
	}
}

// kfh is the kernel's handle for the bridge's handle b.
func (r *requestFS) kfh(b uint64) uint64 { return r.epoch<<32 | b }

// bfh turns the kernel's handle *fh into the bridge's; false for a
// handle no server knows any more.
func (r *requestFS) bfh(fh *uint64) bool {
	k := *fh
	if k == 0 || k>>32 == r.epoch {
		*fh = k & 0xffffffff
		return true
	}
	if !r.carried.Load() {
		return false
	}
	r.carry.mu.Lock()
	b, ok := r.carry.fhs[k]
	r.carry.mu.Unlock()
	*fh = b
	return ok
}

// fixIno puts the inode number in attributes the bridge gave the node id.
func (r *requestFS) fixIno(id uint64, a *fuse.Attr) {
	if id&extraIDBit == 0 {
		return
	}
	if ino, ok := r.ofs.inoOfID(id); ok {
		a.Ino = ino
	}
}

// entry completes a reply that gives the kernel a node: parent/name.
func (r *requestFS) entry(s fuse.Status, parent uint64, name string, out *fuse.EntryOut) {
	if s == fuse.OK && out.NodeId != 0 { // node id 0: a cached miss
		r.fixIno(out.NodeId, &out.Attr)
		r.ofs.state.entered(out.NodeId, out.Attr.Ino, out.Generation, parent, name)
	}
}

// opened records a new handle and gives the kernel its own number for it.
func (r *requestFS) opened(id uint64, flags uint32, out *fuse.OpenOut, dir bool) {
	if r.m != nil && !dir {
		r.m.Open(out.OpenFlags&fuse.FOPEN_PASSTHROUGH != 0)
	}
	out.Fh = r.kfh(out.Fh)
	if r.carried.Load() && out.OpenFlags&fuse.FOPEN_PASSTHROUGH != 0 {
		r.useCarriedBacking(id, out)
	}
	r.ofs.state.opened(out.Fh, id, flags, out.BackingID, dir)
}

func (r *requestFS) released(kfh uint64) {
	r.ofs.state.released(kfh)
	if r.carried.Load() {
		r.dropCarried(kfh)
	}
}

func (r *requestFS) Lookup(c <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) (s fuse.Status) {
	defer r.end("LOOKUP", r.begin(), &s)
	s = r.next.Lookup(c, h, name, out)
	r.entry(s, h.NodeId, name, out)
	return s
}

func (r *requestFS) Forget(id, nlookup uint64) {
	// Not parked: the kernel never sends a FORGET again.
	s := fuse.OK
	defer r.end("FORGET", r.begin2(), &s)
	r.ofs.state.forgot(id, nlookup)
	if r.carried.Load() {
		nlookup = r.payDeficit(id, nlookup)
		if nlookup == 0 {
			return
		}
	}
	r.next.Forget(id, nlookup)
}

// begin2 is begin for requests that must not be parked.
func (r *requestFS) begin2() time.Time {
	r.inflight.Add(1)
	if r.m != nil {
		return time.Now()
	}
	return time.Time{}
}

func (r *requestFS) GetAttr(c <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) (s fuse.Status) {
	defer r.end("GETATTR", r.begin(), &s)
	if !r.bfh(&in.Fh_) {
		return fuse.Status(syscall.EBADF)
	}
	s = r.next.GetAttr(c, in, out)
	if s == fuse.OK {
		r.fixIno(in.NodeId, &out.Attr)
	}
	return s
}

func (r *requestFS) SetAttr(c <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) (s fuse.Status) {
	defer r.end("SETATTR", r.begin(), &s)
	if in.Valid&fuse.FATTR_FH != 0 && !r.bfh(&in.Fh) {
		return fuse.Status(syscall.EBADF)
	}
	s = r.next.SetAttr(c, in, out)
	if s == fuse.OK {
		r.fixIno(in.NodeId, &out.Attr)
	}
	return s
}

func (r *requestFS) Mknod(c <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) (s fuse.Status) {
	defer r.end("MKNOD", r.begin(), &s)
	s = r.next.Mknod(c, in, name, out)
	s = r.resentMade(c, s, &in.InHeader, name, in.Mode, out)
	r.entry(s, in.NodeId, name, out)
	return s
}

func (r *requestFS) Mkdir(c <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) (s fuse.Status) {
	defer r.end("MKDIR", r.begin(), &s)
	s = r.next.Mkdir(c, in, name, out)
	s = r.resentMade(c, s, &in.InHeader, name, syscall.S_IFDIR, out)
	r.entry(s, in.NodeId, name, out)
	return s
}

func (r *requestFS) Unlink(c <-chan struct{}, h *fuse.InHeader, name string) (s fuse.Status) {
	defer r.end("UNLINK", r.begin(), &s)
	s = r.resentGone(r.next.Unlink(c, h, name), h)
	if s == fuse.OK {
		r.ofs.state.unlinked(h.NodeId, name)
	}
	return s
}

func (r *requestFS) Rmdir(c <-chan struct{}, h *fuse.InHeader, name string) (s fuse.Status) {
	defer r.end("RMDIR", r.begin(), &s)
	s = r.resentGone(r.next.Rmdir(c, h, name), h)
	if s == fuse.OK {
		r.ofs.state.unlinked(h.NodeId, name)
	}
	return s
}

func (r *requestFS) Rename(c <-chan struct{}, in *fuse.RenameIn, oldName, newName string) (s fuse.Status) {
	defer r.end("RENAME", r.begin(), &s)
	s = r.resentRename(c, r.next.Rename(c, in, oldName, newName), in, oldName, newName)
	if s == fuse.OK {
		r.ofs.state.renamed(in.NodeId, oldName, in.Newdir, newName, in.Flags&unix.RENAME_EXCHANGE != 0)
	}
	return s
}

func (r *requestFS) Link(c <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) (s fuse.Status) {
	defer r.end("LINK", r.begin(), &s)
	s = r.next.Link(c, in, name, out)
	s = r.resentLink(c, s, in, name, out)
	r.entry(s, in.NodeId, name, out)
	return s
}

func (r *requestFS) Symlink(c <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) (s fuse.Status) {
	defer r.end("SYMLINK", r.begin(), &s)
	s = r.next.Symlink(c, h, target, name, out)
	s = r.resentMade(c, s, h, name, syscall.S_IFLNK, out)
	r.entry(s, h.NodeId, name, out)
	return s
}

func (r *requestFS) Readlink(c <-chan struct{}, h *fuse.InHeader) (b []byte, s fuse.Status) {
	defer r.end("READLINK", r.begin(), &s)
	return r.next.Readlink(c, h)
}

func (r *requestFS) Access(c <-chan struct{}, in *fuse.AccessIn) (s fuse.Status) {
	defer r.end("ACCESS", r.begin(), &s)
	return r.next.Access(c, in)
}

func (r *requestFS) GetXAttr(c <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (n uint32, s fuse.Status) {
	defer r.end("GETXATTR", r.begin(), &s)
	return r.next.GetXAttr(c, h, attr, dest)
}

func (r *requestFS) ListXAttr(c <-chan struct{}, h *fuse.InHeader, dest []byte) (n uint32, s fuse.Status) {
	defer r.end("LISTXATTR", r.begin(), &s)
	return r.next.ListXAttr(c, h, dest)
}

func (r *requestFS) SetXAttr(c <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) (s fuse.Status) {
	defer r.end("SETXATTR", r.begin(), &s)
	return r.next.SetXAttr(c, in, attr, data)
}

func (r *requestFS) RemoveXAttr(c <-chan struct{}, h *fuse.InHeader, attr string) (s fuse.Status) {
	defer r.end("REMOVEXATTR", r.begin(), &s)
	return r.next.RemoveXAttr(c, h, attr)
}

func (r *requestFS) Create(c <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) (s fuse.Status) {
	defer r.end("CREATE", r.begin(), &s)
	s = r.next.Create(c, in, name, out)
	s = r.resentCreate(c, s, in, name, out)
	if s == fuse.OK {
		r.entry(s, in.NodeId, name, &out.EntryOut)
		r.opened(out.NodeId, in.Flags, &out.OpenOut, false)
	}
	return s
}

func (r *requestFS) Tmpfile(c <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) (s fuse.Status) {
	defer r.end("TMPFILE", r.begin(), &s)
	s = r.next.Tmpfile(c, in, out)
	if s == fuse.OK {
		r.entry(s, in.NodeId, "", &out.EntryOut)
		r.opened(out.NodeId, in.Flags, &out.OpenOut, false)
	}
	return s
}

func (r *requestFS) Open(c <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) (s fuse.Status) {
	defer r.end("OPEN", r.begin(), &s)
	s = r.next.Open(c, in, out)
	if s == fuse.OK {
		r.opened(in.NodeId, in.Flags, out, false)
	}
	return s
}

func (r *requestFS) Read(c <-chan struct{}, in *fuse.ReadIn, buf []byte) (res fuse.ReadResult, s fuse.Status) {
	defer r.end("READ", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return nil, fuse.Status(syscall.EBADF)
	}
	return r.next.Read(c, in, buf)
}

func (r *requestFS) Lseek(c <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) (s fuse.Status) {
	defer r.end("LSEEK", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return fuse.Status(syscall.EBADF)
	}
	return r.next.Lseek(c, in, out)
}

func (r *requestFS) GetLk(c <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) (s fuse.Status) {
	defer r.end("GETLK", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return fuse.Status(syscall.EBADF)
	}
	return r.next.GetLk(c, in, out)
}

func (r *requestFS) SetLk(c <-chan struct{}, in *fuse.LkIn) (s fuse.Status) {
	defer r.end("SETLK", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return fuse.Status(syscall.EBADF)
	}
	return r.next.SetLk(c, in)
}

func (r *requestFS) SetLkw(c <-chan struct{}, in *fuse.LkIn) (s fuse.Status) {
	defer r.end("SETLKW", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return fuse.Status(syscall.EBADF)
	}
	return r.next.SetLkw(c, in)
}

func (r *requestFS) Release(c <-chan struct{}, in *fuse.ReleaseIn) {
	s := fuse.OK
	defer r.end("RELEASE", r.begin(), &s)
	k := in.Fh
	if r.bfh(&in.Fh) {
		r.next.Release(c, in)
	}
	r.released(k)
}

func (r *requestFS) Write(c <-chan struct{}, in *fuse.WriteIn, data []byte) (n uint32, s fuse.Status) {
	defer r.end("WRITE", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return 0, fuse.Status(syscall.EBADF)
	}
	return r.next.Write(c, in, data)
}

func (r *requestFS) Writev(c <-chan struct{}, in *fuse.WriteIn, data [][]byte) (n uint32, s fuse.Status) {
	defer r.end("WRITE", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return 0, fuse.Status(syscall.EBADF)
	}
	return r.next.Writev(c, in, data)
}

func (r *requestFS) CopyFileRange(c <-chan struct{}, in *fuse.CopyFileRangeIn) (n uint32, s fuse.Status) {
	defer r.end("COPY_FILE_RANGE", r.begin(), &s)
	if !r.bfh(&in.FhIn) || !r.bfh(&in.FhOut) {
		return 0, fuse.Status(syscall.EBADF)
	}
	return r.next.CopyFileRange(c, in)
}

func (r *requestFS) Ioctl(c <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) (s fuse.Status) {
	defer r.end("IOCTL", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return fuse.Status(syscall.EBADF)
	}
	return r.next.Ioctl(c, in, inbuf, out, outbuf)
}

func (r *requestFS) Flush(c <-chan struct{}, in *fuse.FlushIn) (s fuse.Status) {
	defer r.end("FLUSH", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return fuse.OK // nothing of it is left to flush
	}
	return r.next.Flush(c, in)
}

func (r *requestFS) Fsync(c <-chan struct{}, in *fuse.FsyncIn) (s fuse.Status) {
	defer r.end("FSYNC", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return fuse.Status(syscall.EBADF)
	}
	return r.next.Fsync(c, in)
}

func (r *requestFS) Fallocate(c <-chan struct{}, in *fuse.FallocateIn) (s fuse.Status) {
	defer r.end("FALLOCATE", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return fuse.Status(syscall.EBADF)
	}
	return r.next.Fallocate(c, in)
}

func (r *requestFS) OpenDir(c <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) (s fuse.Status) {
	defer r.end("OPENDIR", r.begin(), &s)
	s = r.next.OpenDir(c, in, out)
	if s == fuse.OK {
		r.opened(in.NodeId, in.Flags, out, true)
	}
	return s
}

func (r *requestFS) ReadDir(c <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) (s fuse.Status) {
	defer r.end("READDIR", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return fuse.Status(syscall.EBADF)
	}
	return r.next.ReadDir(c, in, out)
}

func (r *requestFS) ReadDirPlus(c <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) (s fuse.Status) {
	defer r.end("READDIRPLUS", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return fuse.Status(syscall.EBADF)
	}
	return r.next.ReadDirPlus(c, in, out)
}

func (r *requestFS) ReleaseDir(in *fuse.ReleaseIn) {
	s := fuse.OK
	defer r.end("RELEASEDIR", r.begin(), &s)
	k := in.Fh
	if r.bfh(&in.Fh) {
		r.next.ReleaseDir(in)
	}
	r.released(k)
}

func (r *requestFS) FsyncDir(c <-chan struct{}, in *fuse.FsyncIn) (s fuse.Status) {
	defer r.end("FSYNCDIR", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return fuse.Status(syscall.EBADF)
	}
	return r.next.FsyncDir(c, in)
}

func (r *requestFS) StatFs(c <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) (s fuse.Status) {
	defer r.end("STATFS", r.begin(), &s)
	return r.next.StatFs(c, h, out)
}

func (r *requestFS) Statx(c <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) (s fuse.Status) {
	defer r.end("STATX", r.begin(), &s)
	if !r.bfh(&in.Fh) {
		return fuse.Status(syscall.EBADF)
	}
	s = r.next.Statx(c, in, out)
	if s == fuse.OK && in.NodeId&extraIDBit != 0 {
		if ino, ok := r.ofs.inoOfID(in.NodeId); ok {
			out.Ino = ino
		}
	}
	return s
}

// The rest of fuse.RawFileSystem needs neither gate nor translation.

func (r *requestFS) String() string      { return r.next.String() }
func (r *requestFS) SetDebug(debug bool) { r.next.SetDebug(debug) }
func (r *requestFS) Init(s *fuse.Server) { r.next.Init(s) }
func (r *requestFS) OnUnmount()          { r.next.OnUnmount() }
