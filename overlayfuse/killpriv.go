package overlayfuse

import (
	"context"
	"slices"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Without FUSE_HANDLE_KILLPRIV_V2 the kernel asks for security.capability
// before every write, to know whether to drop privileges: a round trip per
// write, passthrough or not. With it the kernel marks files without
// set-id bits S_NOSEC and stops asking, and the server drops privileges:
//   - a SETATTR with FATTR_KILL_SUIDGID (a truncate, or a passthrough
//     write, of a set-id file by a caller without CAP_FSETID);
//   - a write that reaches us, by a caller without CAP_FSETID: we see only
//     the caller's uid, so any uid but 0 counts as without;
//   - security.capability goes on any write, as in the kernel.
// Our own writes to the backing file are root's and drop nothing.

const capabilityXattr = "security.capability"

// killSuidgid drops the set-user-ID bit, and the set-group-ID bit of a
// group-executable file, of the upper object.
func killSuidgid(fd int, st *unix.Stat_t) error {
	mode := st.Mode & 07777
	kill := mode & unix.S_ISUID
	if mode&(unix.S_ISGID|unix.S_IXGRP) == unix.S_ISGID|unix.S_IXGRP {
		kill |= unix.S_ISGID
	}
	if kill == 0 {
		return nil
	}
	return unix.Fchmodat(unix.AT_FDCWD, fdPath(fd), mode&^kill, 0)
}

// killPrivOnWrite drops what a write by the caller drops, before it.
func (f *file) killPrivOnWrite(ctx context.Context) syscall.Errno {
	n := f.n
	names, errno := n.xattrNames()
	if errno != 0 {
		return errno
	}
	hasCap := slices.Contains(names, capabilityXattr)
	caller, _ := fuse.FromContext(ctx)
	unprivileged := caller != nil && caller.Uid != 0
	if !hasCap && !unprivileged {
		return 0
	}
	var st unix.Stat_t
	if err := fstat(f.fd, &st); err != nil {
		return f.n.ofs.toErrno(err)
	}
	if unprivileged {
		if err := killSuidgid(f.fd, &st); err != nil {
			return f.n.ofs.toErrno(err)
		}
	}
	if hasCap {
		if err := unix.Fremovexattr(f.fd, capabilityXattr); err != nil && err != unix.ENODATA {
			return f.n.ofs.toErrno(err)
		}
		n.forgetXattrs()
	}
	return 0
}

// killPrivOnSetattr serves FATTR_KILL_SUIDGID.
func (n *node) killPrivOnSetattr(up int) syscall.Errno {
	var st unix.Stat_t
	if err := fstat(up, &st); err != nil {
		return n.ofs.toErrno(err)
	}
	if err := killSuidgid(up, &st); err != nil {
		return n.ofs.toErrno(err)
	}
	if err := unix.Removexattr(fdPath(up), capabilityXattr); err != nil && err != unix.ENODATA && err != unix.ENOTSUP {
		return n.ofs.toErrno(err)
	}
	n.forgetXattrs()
	return 0
}
