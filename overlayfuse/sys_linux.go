package overlayfuse

import (
	"errors"
	"log"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// resolveFlags confine every path walk to the layer it starts in: no
// symlink (or /proc magic link) in a layer can send the root daemon
// elsewhere.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// openBeneath opens path relative to dirfd without leaving it and without
// following any symlink.
func openBeneath(dirfd int, path string, flags int) (int, error) {
	for {
		fd, err := unix.Openat2(dirfd, path, &unix.OpenHow{
			Flags:   uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW),
			Resolve: resolveFlags,
		})
		if err == unix.EINTR || err == unix.EAGAIN {
			continue // EAGAIN: a concurrent rename raced the walk
		}
		return fd, err
	}
}

// openPath opens one directory entry as an O_PATH handle, never
// following it.
func openPath(dirfd int, name string) (int, error) {
	return unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// fdPath names fd through /proc, for the calls that have no *at form
// taking an O_PATH descriptor of a regular file or directory.
func fdPath(fd int) string {
	return "/proc/self/fd/" + strconv.Itoa(fd)
}

// reopen opens the file an O_PATH descriptor refers to, with new flags.
func reopen(fd int, flags int) (int, error) {
	for {
		nfd, err := unix.Open(fdPath(fd), flags|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		return nfd, err
	}
}

func fstat(fd int, st *unix.Stat_t) error {
	return unix.Fstatat(fd, "", st, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW)
}

func lstatAt(dirfd int, name string, st *unix.Stat_t) error {
	return unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW)
}

// xpath names an object for the xattr calls, which take no O_PATH fd (the
// *xattrat calls of Linux 6.13 refuse them): an fd through /proc, or an
// entry of a directory fd, which the l* calls do not follow. A symlink can
// only be named the second way: its /proc name is a link to follow.
type xpath struct {
	p    string
	link bool
}

func fdXpath(fd int) xpath { return xpath{p: fdPath(fd)} }

func entryXpath(dirfd int, name string) xpath {
	return xpath{p: fdPath(dirfd) + "/" + name, link: true}
}

func (x xpath) get(attr string, dest []byte) (int, error) {
	if x.link {
		return unix.Lgetxattr(x.p, attr, dest)
	}
	return unix.Getxattr(x.p, attr, dest)
}

func (x xpath) set(attr string, data []byte, flags int) error {
	if x.link {
		return unix.Lsetxattr(x.p, attr, data, flags)
	}
	return unix.Setxattr(x.p, attr, data, flags)
}

func (x xpath) list(dest []byte) (int, error) {
	if x.link {
		return unix.Llistxattr(x.p, dest)
	}
	return unix.Listxattr(x.p, dest)
}

func (x xpath) remove(attr string) error {
	if x.link {
		return unix.Lremovexattr(x.p, attr)
	}
	return unix.Removexattr(x.p, attr)
}

func fgetxattr(fd int, attr string, dest []byte) (int, error) {
	return fdXpath(fd).get(attr, dest)
}

func fsetxattr(fd int, attr string, data []byte, flags int) error {
	return fdXpath(fd).set(attr, data, flags)
}

// getxattrAll reads a whole attribute value, growing the buffer as needed.
func (x xpath) getAll(attr string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := x.get(attr, buf)
		if err == unix.ERANGE {
			sz, err := x.get(attr, nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, sz+64)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// listAll lists every attribute name.
func (x xpath) listAll() ([]string, error) {
	buf := make([]byte, 1024)
	for {
		n, err := x.list(buf)
		if err == unix.ERANGE {
			sz, err := x.list(nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, sz+256)
			continue
		}
		if err != nil {
			return nil, err
		}
		return splitNul(buf[:n]), nil
	}
}

func splitNul(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == 0 {
			if i > start {
				out = append(out, string(b[start:i]))
			}
			start = i + 1
		}
	}
	return out
}

func unmountDetach(mountpoint string) error {
	return unix.Unmount(mountpoint, unix.MNT_DETACH)
}

// toErrno maps err to the errno the kernel gets, through wrapping (as
// go-fuse's fs.ToErrno): an error without one becomes EIO. Code with a
// mount at hand uses overlayFS.toErrno, which also logs those.
func toErrno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(syscall.Errno); ok && e != 0 {
		return e // the common case, without errors.As' reflection
	}
	var e syscall.Errno
	if errors.As(err, &e) && e != 0 {
		return e
	}
	return syscall.EIO
}

// maxEIOMessages bounds the distinct messages eioLog remembers: messages
// may name paths, and a hot failure must not grow memory or flood the log.
const maxEIOMessages = 64

// eioLog logs each distinct error turned into EIO once.
type eioLog struct {
	mu         sync.Mutex
	seen       map[string]struct{}
	suppressed bool
}

func (l *eioLog) log(logger *log.Logger, err error) {
	msg := err.Error()
	l.mu.Lock()
	_, seen := l.seen[msg]
	full := len(l.seen) >= maxEIOMessages
	first := !seen && !full
	if first {
		if l.seen == nil {
			l.seen = make(map[string]struct{})
		}
		l.seen[msg] = struct{}{}
	}
	noteFull := !seen && full && !l.suppressed
	if noteFull {
		l.suppressed = true
	}
	l.mu.Unlock()
	if logger == nil {
		logger = log.Default()
	}
	switch {
	case first:
		logger.Printf("overlayfuse: EIO for: %v", err)
	case noteFull:
		logger.Printf("overlayfuse: EIO for: %v (further new EIO causes not logged)", err)
	}
}

// toErrno is toErrno that logs, once per message, what it turns into EIO.
func (ofs *overlayFS) toErrno(err error) syscall.Errno {
	e := toErrno(err)
	if e == syscall.EIO && !errors.Is(err, syscall.EIO) {
		ofs.eio.log(ofs.opts.Logger, err)
	}
	return e
}
