package overlayfuse

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// openFlagsPassed are the open flags that reach the backing file; the
// creation flags were dealt with by the overlay.
const openFlagsPassed = unix.O_ACCMODE | unix.O_APPEND | unix.O_SYNC | unix.O_DSYNC |
	unix.O_DIRECT | unix.O_NOATIME | unix.O_NONBLOCK | unix.O_TRUNC

// file is an open overlay file, stacked on an open real file.
type file struct {
	n *node

	mu    sync.RWMutex
	fd    int
	flags uint32
	// upper: fd is the upper file. A read-only handle opened before a
	// copy-up moves over to the upper file at its next read, so it sees
	// what was written after.
	upper bool
	// passthrough: the kernel may take fd as the node's backing file;
	// ptLower: and fd is the lower file.
	passthrough, ptLower bool
	// counted: the node counts the handle among its opens.
	counted bool
	// owners took locks through this handle (rawfs_locks.go).
	owners lockOwners
}

var (
	_ fs.FileReader         = (*file)(nil)
	_ fs.FileWriter         = (*file)(nil)
	_ fs.FileFsyncer        = (*file)(nil)
	_ fs.FileReleaser       = (*file)(nil)
	_ fs.FileGetattrer      = (*file)(nil)
	_ fs.FileAllocater      = (*file)(nil)
	_ fs.FileLseeker        = (*file)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeCopyFileRanger = (*node)(nil)
)

// newFile makes a handle whose open node n has already counted
// (countOpen); counted: it did.
func (n *node) newFile(fd int, flags uint32, upper, passthrough, counted bool) *file {
	return &file{n: n, fd: fd, flags: flags, upper: upper, passthrough: passthrough,
		ptLower: passthrough && !upper, counted: counted}
}

// countOpen counts an open of n, with n.mu held: the kernel refuses to
// mix cached and passthrough opens of one inode (EIO), so the decision
// and the count must not be split by another open.
func (n *node) countOpen(pt, ptLower bool, d int) {
	switch {
	case !pt:
		n.cachedOpens += d
	case ptLower:
		n.ptLowerOpens += d
		fallthrough
	default:
		n.ptOpens += d
	}
}

// unpass turns a handle the kernel did not take as passthrough into a
// cached one.
func (f *file) unpass() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	if f.counted {
		f.n.countOpen(true, f.ptLower, -1)
		f.n.countOpen(false, false, 1)
	}
	f.passthrough, f.ptLower = false, false
}

// createdFile is the handle of a file just made: its node's first open.
func (n *node) createdFile(fd int, flags uint32) *file {
	pt := n.passthroughFor()
	n.mu.Lock()
	pt = pt && n.cachedOpens == 0
	n.countOpen(pt, false, 1)
	n.mu.Unlock()
	return n.newFile(fd, flags, true, pt, true)
}

func isWritable(flags uint32) bool {
	return flags&unix.O_ACCMODE != unix.O_RDONLY || flags&unix.O_TRUNC != 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if errno := n.checkOpen(flags); errno != 0 {
		return nil, 0, errno
	}
	// The kernel opens files itself, with flags 0, for the flag ioctls;
	// such an open never uses the backing file, and the kernel does not
	// count it as an open of the inode. Every open(2) carries
	// O_LARGEFILE on 64 bits.
	internal := flags == 0
	if isWritable(flags) {
		if n.ofs.readOnly() {
			return nil, 0, syscall.EROFS
		}
		if n.hasLowerBacking() {
			// Only a new node, found by the kernel's one retry of
			// the lookup, can be opened for writing. Copy up first:
			// the new node is then born upper, and a read-only open
			// racing with the retry cannot tie it to the lower file
			// again (a second ESTALE would reach the caller).
			if errno := n.copyUp(ctx); errno != 0 {
				return nil, 0, errno
			}
			return nil, 0, n.retireFor(ctx)
		}
		// Copy up before the open returns: a writable map then always
		// maps the upper file.
		if errno := n.copyUp(ctx); errno != 0 {
			return nil, 0, errno
		}
	}
	pt := !internal && n.passthroughFor()
	n.mu.Lock()
	real, upper := n.realLocked(), n.upper.valid()
	if !internal {
		// A node with cached opens serves new ones cached.
		pt = pt && n.cachedOpens == 0
		if (upper && n.ptLowerOpens > 0) || (!pt && n.ptOpens > 0) {
			n.mu.Unlock()
			if !isWritable(flags) {
				// A path open reaches the new node by the retry.
				return nil, 0, n.retire()
			}
			return nil, 0, n.retireFor(ctx)
		}
		n.countOpen(pt, !upper, 1)
	}
	n.mu.Unlock()
	flags &= openFlagsPassed
	fd, err := real.open(int(flags))
	if err != nil {
		if !internal {
			n.mu.Lock()
			n.countOpen(pt, !upper, -1)
			n.mu.Unlock()
		}
		return nil, 0, n.ofs.toErrno(err)
	}
	return n.newFile(fd, flags, upper, pt, !internal), n.openFlags(), 0
}

// hasLowerBacking: the kernel's backing file of the node is its lower
// file, so every new open of the node gets that file.
func (n *node) hasLowerBacking() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ptLowerOpens > 0
}

// readFd is the fd reads go to: for a read-only handle of a lower file
// that has been copied up since, a fresh fd of the upper file.
func (f *file) readFd() (int, syscall.Errno) {
	f.mu.RLock()
	fd, upper := f.fd, f.upper
	f.mu.RUnlock()
	if upper {
		return fd, 0
	}
	up := f.n.upperRef()
	if !up.valid() {
		return fd, 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.upper {
		return f.fd, 0
	}
	nfd, err := up.open(int(f.flags &^ unix.O_TRUNC))
	if err == unix.ESTALE {
		// The copy lost its last name before this handle moved over
		// and cannot be opened any more: keep reading what the
		// handle had, never ESTALE on an open descriptor.
		return f.fd, 0
	}
	if err != nil {
		return -1, f.n.ofs.toErrno(err)
	}
	// The old fd may be in use by a concurrent read; dup2 swaps the file
	// under the same number atomically.
	if err := unix.Dup3(nfd, f.fd, unix.O_CLOEXEC); err != nil {
		unix.Close(nfd)
		return -1, f.n.ofs.toErrno(err)
	}
	unix.Close(nfd)
	f.upper = true
	return f.fd, 0
}

func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	fd, errno := f.readFd()
	if errno != 0 {
		return nil, errno
	}
	if f.flags&unix.O_DIRECT != 0 && !aligned(dest) {
		buf := getAligned(len(dest))
		defer putAligned(buf)
		n, err := unix.Pread(fd, buf[:len(dest)], off)
		if err != nil {
			return nil, f.n.ofs.toErrno(err)
		}
		copy(dest, buf[:n])
		return fuse.ReadResultData(dest[:n]), 0
	}
	n, err := unix.Pread(fd, dest, off)
	if err != nil {
		return nil, f.n.ofs.toErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if errno := f.killPrivOnWrite(ctx); errno != 0 {
		return 0, errno
	}
	if f.flags&unix.O_DIRECT != 0 && !aligned(data) {
		buf := getAligned(len(data))
		defer putAligned(buf)
		copy(buf, data)
		data = buf[:len(data)]
	}
	n, err := unix.Pwrite(f.fd, data, off)
	return uint32(n), f.n.ofs.toErrno(err)
}

func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if f.n.ofs.opts.Volatile {
		return 0
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if flags&fsyncFdatasync != 0 {
		return f.n.ofs.toErrno(unix.Fdatasync(f.fd))
	}
	return f.n.ofs.toErrno(unix.Fsync(f.fd))
}

func (f *file) Release(ctx context.Context) syscall.Errno {
	f.releaseLocks()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		return syscall.EBADF
	}
	err := unix.Close(f.fd)
	f.fd = -1
	if f.counted {
		f.n.mu.Lock()
		f.n.countOpen(f.passthrough, f.ptLower, -1)
		f.n.mu.Unlock()
	}
	return f.n.ofs.toErrno(err)
}

// fstat stats the handle's file and reports whether it is the upper one.
func (f *file) fstat(st *unix.Stat_t) (bool, syscall.Errno) {
	fd, errno := f.readFd()
	if errno != 0 {
		return false, errno
	}
	f.mu.RLock()
	upper := f.upper && f.fd == fd
	f.mu.RUnlock()
	return upper, f.n.ofs.toErrno(fstat(fd, st))
}

func (f *file) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	return f.n.Getattr(ctx, f, out)
}

func (f *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.n.ofs.toErrno(unix.Fallocate(f.fd, mode, int64(off), int64(size)))
}

func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	fd, errno := f.readFd()
	if errno != 0 {
		return 0, errno
	}
	n, err := unix.Seek(fd, int64(off), int(whence))
	return uint64(n), f.n.ofs.toErrno(err)
}

func (n *node) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle,
	offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	in, ok1 := fhIn.(*file)
	dst, ok2 := fhOut.(*file)
	if !ok1 || !ok2 {
		return 0, syscall.EXDEV
	}
	rfd, errno := in.readFd()
	if errno != 0 {
		return 0, errno
	}
	dst.mu.RLock()
	defer dst.mu.RUnlock()
	roff, woff := int64(offIn), int64(offOut)
	c, err := unix.CopyFileRange(rfd, &roff, dst.fd, &woff, int(length), int(flags))
	return uint32(c), n.ofs.toErrno(err)
}

// fsyncFdatasync is FUSE_FSYNC_FDATASYNC in fsync's flags.
const fsyncFdatasync = 1
