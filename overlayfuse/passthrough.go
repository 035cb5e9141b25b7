package overlayfuse

import (
	"context"
	"fmt"
	"slices"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// FUSE passthrough hands read, write and mmap of an open file to a backing
// file in the kernel. go-fuse registers one backing file per node, at its
// first open, and the kernel reopens that file for every later open while
// one is live. So a node whose live backing file is its lower file must
// never be opened again once copied up: the open would write the lower
// layer. Such an open swaps the node for a new one (same inode number,
// next generation) and answers ESTALE; the kernel looks the name up again
// and opens the new node, backed by the upper file.

// Filesystem magic numbers whose files cannot back a passthrough file
// under our stacking depth of 1.
const (
	overlayfsMagic = 0x794c7630
	fuseMagic      = 0x65735546
)

// probePassthrough checks, once the mount is up, that the kernel accepts
// backing files, and that no layer is itself stacked.
func (ofs *overlayFS) probePassthrough() error {
	if ofs.opts.Passthrough == PassthroughOff {
		return nil
	}
	if ofs.server.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0 {
		return fmt.Errorf("the kernel does not offer FUSE passthrough (needs Linux 6.9)")
	}
	for _, l := range append([]*layer{ofs.upper}, ofs.lowers...) {
		if l == nil {
			continue
		}
		var s unix.Statfs_t
		if err := unix.Fstatfs(l.fd, &s); err != nil {
			return err
		}
		if s.Type == overlayfsMagic || s.Type == fuseMagic {
			return fmt.Errorf("layer %s is on a stacked filesystem", l.path)
		}
	}
	fd, err := unix.MemfdCreate("overlayfuse-probe", unix.MFD_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	id, errno := ofs.server.RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)})
	if errno != 0 {
		return fmt.Errorf("registering a backing file: %w (needs CAP_SYS_ADMIN)", errno)
	}
	// The probe's answer is in; a failed unregister leaves one id of a
	// closed memfd, freed with the connection.
	_ = ofs.server.UnregisterBackingFd(id)
	ofs.passthrough = true
	return nil
}

// passthroughFor reports whether node n's next open may be passed
// through. Strict consistency keeps nodes that began as lower files in the
// page cache of their FUSE inode, so a read-only map taken before a
// copy-up sees the writes after it. A privileged file is never passed
// through: its writes must reach us to drop the privileges (killpriv.go).
func (n *node) passthroughFor() bool {
	if !n.ofs.passthrough {
		return false
	}
	if n.ofs.opts.Consistency == ConsistencyStrict && !n.bornUpper {
		return false
	}
	return !n.privileged()
}

// privileged: the file has set-id bits or file capabilities.
func (n *node) privileged() bool {
	var st unix.Stat_t
	if n.real().stat(&st) != nil {
		return true
	}
	if st.Mode&unix.S_ISUID != 0 || st.Mode&(unix.S_ISGID|unix.S_IXGRP) == unix.S_ISGID|unix.S_IXGRP {
		return true
	}
	names, errno := n.xattrNames()
	return errno != 0 || slices.Contains(names, capabilityXattr)
}

// retire takes node n out of lookups: the kernel, told ESTALE, looks the
// name up again and gets a new node (same inode number, next generation),
// whose opens start afresh. It serves a copied-up node whose live backing
// file is the lower one, and a node whose next open must not pass through
// while others do (the kernel refuses to mix the two).
func (n *node) retire() syscall.Errno {
	n.mu.Lock()
	n.stale = true
	n.mu.Unlock()
	n.ofs.state.retired(n.StableAttr().Ino, n.layerIndex())
	gen := n.StableAttr().Gen
	n.ofs.mu.Lock()
	if n.ofs.gens[n.ino] <= gen {
		n.ofs.gens[n.ino] = gen + 1
	}
	n.ofs.mu.Unlock()
	return syscall.ESTALE
}

// retireFor retires n for an open by the caller. The kernel retries an
// open that got ESTALE once, looking the path up again; but an open
// through a magic link (/proc/PID/fd/N, map_files) comes back to the
// same retired inode, where it can never succeed: the caller's thread
// coming back gets ETXTBSY.
func (n *node) retireFor(ctx context.Context) syscall.Errno {
	var tid uint32
	if caller, ok := fuse.FromContext(ctx); ok {
		tid = caller.Pid
	}
	n.mu.Lock()
	_, again := n.retiredFor[tid]
	if n.retiredFor == nil {
		n.retiredFor = map[uint32]struct{}{}
	}
	n.retiredFor[tid] = struct{}{}
	n.mu.Unlock()
	if again && tid != 0 {
		return syscall.ETXTBSY
	}
	return n.retire()
}

var _ fs.FilePassthroughFder = (*file)(nil)

// PassthroughFd offers the real file to the kernel as the backing file,
// to be registered with privileges a writer through it lacks
// (backingcred.go). Without them the handle is served in process.
func (f *file) PassthroughFd() (int, bool) {
	if !f.passthrough {
		return -1, false
	}
	if !dropPrivileges() {
		f.unpass()
		return -1, false
	}
	return f.fd, true
}

// layerIndex is the index in ofs.lowers of the layer n's object is on,
// -1 for the upper.
func (n *node) layerIndex() int32 {
	r := n.real()
	if !r.valid() || r.layer == nil || r.layer.upper {
		return -1
	}
	for i, l := range n.ofs.lowers {
		if l == r.layer {
			return int32(i)
		}
	}
	return -1
}
