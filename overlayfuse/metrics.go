package overlayfuse

import (
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Metrics receives what a mount does, for monitoring. Its methods are
// called on the goroutines that serve requests, concurrently: they must
// be cheap and must not block.
type Metrics interface {
	// Op is one FUSE request: its opcode name (LOOKUP, CREATE, ...), the
	// time the server took to answer it and the errno it answered, 0 for
	// success.
	Op(op string, d time.Duration, errno syscall.Errno)
	// CopyUp is one object copied up: the bytes of file data copied (0
	// for anything but a regular file) and the time it took.
	CopyUp(bytes int64, d time.Duration)
	// Open is one file opened or created; passthrough: the kernel does
	// its reads and writes on the backing file, not through the server.
	Open(passthrough bool)
}

// meteredFS times every request on its way to rawFS. Mount puts it in
// only when Options.Metrics is set, so an unmetered mount pays nothing.
type meteredFS struct {
	fuse.RawFileSystem
	m Metrics
}

func (r *meteredFS) done(op string, start time.Time, s fuse.Status) {
	var errno syscall.Errno
	if s > 0 {
		errno = syscall.Errno(s)
	}
	r.m.Op(op, time.Since(start), errno)
}

func (r *meteredFS) opened(s fuse.Status, flags uint32) {
	if s == fuse.OK {
		r.m.Open(flags&fuse.FOPEN_PASSTHROUGH != 0)
	}
}

func (r *meteredFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Lookup(cancel, h, name, out)
	r.done("LOOKUP", t, s)
	return s
}

func (r *meteredFS) Forget(nodeid, nlookup uint64) {
	t := time.Now()
	r.RawFileSystem.Forget(nodeid, nlookup)
	r.done("FORGET", t, fuse.OK)
}

func (r *meteredFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.GetAttr(cancel, in, out)
	r.done("GETATTR", t, s)
	return s
}

func (r *meteredFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.SetAttr(cancel, in, out)
	r.done("SETATTR", t, s)
	return s
}

func (r *meteredFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Mknod(cancel, in, name, out)
	r.done("MKNOD", t, s)
	return s
}

func (r *meteredFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Mkdir(cancel, in, name, out)
	r.done("MKDIR", t, s)
	return s
}

func (r *meteredFS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Unlink(cancel, h, name)
	r.done("UNLINK", t, s)
	return s
}

func (r *meteredFS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Rmdir(cancel, h, name)
	r.done("RMDIR", t, s)
	return s
}

func (r *meteredFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Rename(cancel, in, oldName, newName)
	r.done("RENAME", t, s)
	return s
}

func (r *meteredFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Link(cancel, in, name, out)
	r.done("LINK", t, s)
	return s
}

func (r *meteredFS) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Symlink(cancel, h, target, name, out)
	r.done("SYMLINK", t, s)
	return s
}

func (r *meteredFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	t := time.Now()
	b, s := r.RawFileSystem.Readlink(cancel, h)
	r.done("READLINK", t, s)
	return b, s
}

func (r *meteredFS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Access(cancel, in)
	r.done("ACCESS", t, s)
	return s
}

func (r *meteredFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	t := time.Now()
	n, s := r.RawFileSystem.GetXAttr(cancel, h, attr, dest)
	r.done("GETXATTR", t, s)
	return n, s
}

func (r *meteredFS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	t := time.Now()
	n, s := r.RawFileSystem.ListXAttr(cancel, h, dest)
	r.done("LISTXATTR", t, s)
	return n, s
}

func (r *meteredFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.SetXAttr(cancel, in, attr, data)
	r.done("SETXATTR", t, s)
	return s
}

func (r *meteredFS) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.RemoveXAttr(cancel, h, attr)
	r.done("REMOVEXATTR", t, s)
	return s
}

func (r *meteredFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Create(cancel, in, name, out)
	r.done("CREATE", t, s)
	r.opened(s, out.OpenFlags)
	return s
}

func (r *meteredFS) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Tmpfile(cancel, in, out)
	r.done("TMPFILE", t, s)
	r.opened(s, out.OpenFlags)
	return s
}

func (r *meteredFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Open(cancel, in, out)
	r.done("OPEN", t, s)
	r.opened(s, out.OpenFlags)
	return s
}

func (r *meteredFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	t := time.Now()
	res, s := r.RawFileSystem.Read(cancel, in, buf)
	r.done("READ", t, s)
	return res, s
}

func (r *meteredFS) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Lseek(cancel, in, out)
	r.done("LSEEK", t, s)
	return s
}

func (r *meteredFS) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.GetLk(cancel, in, out)
	r.done("GETLK", t, s)
	return s
}

func (r *meteredFS) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.SetLk(cancel, in)
	r.done("SETLK", t, s)
	return s
}

func (r *meteredFS) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.SetLkw(cancel, in)
	r.done("SETLKW", t, s)
	return s
}

func (r *meteredFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	t := time.Now()
	r.RawFileSystem.Release(cancel, in)
	r.done("RELEASE", t, fuse.OK)
}

func (r *meteredFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	t := time.Now()
	n, s := r.RawFileSystem.Write(cancel, in, data)
	r.done("WRITE", t, s)
	return n, s
}

func (r *meteredFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	t := time.Now()
	n, s := r.RawFileSystem.Writev(cancel, in, data)
	r.done("WRITE", t, s)
	return n, s
}

func (r *meteredFS) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	t := time.Now()
	n, s := r.RawFileSystem.CopyFileRange(cancel, in)
	r.done("COPY_FILE_RANGE", t, s)
	return n, s
}

func (r *meteredFS) Ioctl(cancel <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Ioctl(cancel, in, inbuf, out, outbuf)
	r.done("IOCTL", t, s)
	return s
}

func (r *meteredFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Flush(cancel, in)
	r.done("FLUSH", t, s)
	return s
}

func (r *meteredFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Fsync(cancel, in)
	r.done("FSYNC", t, s)
	return s
}

func (r *meteredFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Fallocate(cancel, in)
	r.done("FALLOCATE", t, s)
	return s
}

func (r *meteredFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.OpenDir(cancel, in, out)
	r.done("OPENDIR", t, s)
	return s
}

func (r *meteredFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.ReadDir(cancel, in, out)
	r.done("READDIR", t, s)
	return s
}

func (r *meteredFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.ReadDirPlus(cancel, in, out)
	r.done("READDIRPLUS", t, s)
	return s
}

func (r *meteredFS) ReleaseDir(in *fuse.ReleaseIn) {
	t := time.Now()
	r.RawFileSystem.ReleaseDir(in)
	r.done("RELEASEDIR", t, fuse.OK)
}

func (r *meteredFS) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.FsyncDir(cancel, in)
	r.done("FSYNCDIR", t, s)
	return s
}

func (r *meteredFS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.StatFs(cancel, h, out)
	r.done("STATFS", t, s)
	return s
}

func (r *meteredFS) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	t := time.Now()
	s := r.RawFileSystem.Statx(cancel, in, out)
	r.done("STATX", t, s)
	return s
}
