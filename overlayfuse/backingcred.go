package overlayfuse

import (
	"runtime"
	"sync"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The kernel runs every passthrough write with the credentials of the
// thread that registered the backing file (FUSE_DEV_IOC_BACKING_OPEN
// keeps prepare_creds()), and the backing filesystem drops set-id bits
// on write only for a writer without CAP_FSETID outside the file's group.
// go-fuse registers from inside Open/Create/Tmpfile, on the request's
// goroutine, right after asking the handle for its fd. So rawFS pins the
// goroutine to its thread for those requests, PassthroughFd takes
// CAP_FSETID and the groups off that thread, and rawFS gives them back
// once the request is done: a passthrough write then drops set-id bits
// exactly as the kernel does for an unprivileged writer, even when the
// file became set-id after the open. security.capability goes on any
// write anyway.

// backingGid is the only group a registering thread is in, one no file
// should have.
const backingGid = 0xfffffffe

// regThread is a thread inside a request that may register a backing
// file, and what PassthroughFd took from it.
type regThread struct {
	dropped bool
	caps    [2]unix.CapUserData
	fsgid   int
	groups  []int
}

// regThreads are the armed threads by thread id.
var regThreads sync.Map

// registering runs fn, a bridge request that may register a backing file,
// on a pinned thread armed for dropPrivileges.
func registering(fn func()) {
	runtime.LockOSThread()
	tid := unix.Gettid()
	rt := &regThread{}
	regThreads.Store(tid, rt)
	fn()
	regThreads.Delete(tid)
	if rt.dropped && rt.restore() != nil {
		// The thread keeps reduced credentials: it must end with
		// this goroutine rather than serve others.
		return
	}
	runtime.UnlockOSThread()
}

// dropPrivileges takes CAP_FSETID and every group off the calling thread,
// which must be armed by registering.
func dropPrivileges() bool {
	v, ok := regThreads.Load(unix.Gettid())
	if !ok {
		return false
	}
	rt := v.(*regThread)
	if rt.dropped {
		return true
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	if unix.Capget(&hdr, &rt.caps[0]) != nil {
		return false
	}
	groups, err := unix.Getgroups()
	if err != nil {
		return false
	}
	rt.groups = groups
	// setfsgid answers the previous fsgid; asking for -1 changes nothing.
	rt.fsgid = rawSetfsgid(-1)
	caps := rt.caps
	caps[unix.CAP_FSETID/32].Effective &^= 1 << (unix.CAP_FSETID % 32)
	rt.dropped = true
	if unix.Capset(&hdr, &caps[0]) != nil || rawSetgroups(nil) != nil {
		// The failure to drop is what counts; restore what can be.
		_ = rt.restore()
		return false
	}
	rawSetfsgid(backingGid)
	return true
}

func (rt *regThread) restore() error {
	rawSetfsgid(rt.fsgid)
	if err := rawSetgroups(rt.groups); err != nil {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	return unix.Capset(&hdr, &rt.caps[0])
}

// rawSetfsgid and rawSetgroups change the calling thread only (the
// library calls change every thread of the process).
func rawSetfsgid(gid int) int {
	// setfsgid reports no error: it returns the previous fsgid.
	old, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, uintptr(gid), 0, 0)
	return int(old)
}

func rawSetgroups(groups []int) error {
	gs := make([]uint32, len(groups))
	for i, g := range groups {
		gs[i] = uint32(g)
	}
	var p uintptr
	if len(gs) > 0 {
		p = uintptr(unsafe.Pointer(&gs[0]))
	}
	_, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(gs)), p, 0)
	if e != 0 {
		return e
	}
	return nil
}

func (r *rawFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) (s fuse.Status) {
	registering(func() { s = r.RawFileSystem.Open(cancel, in, out) })
	return s
}

func (r *rawFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) (s fuse.Status) {
	registering(func() { s = r.RawFileSystem.Create(cancel, in, name, out) })
	if s == fuse.OK {
		noSetidAttrCache(&out.Attr, &out.AttrValid, &out.AttrValidNsec)
	}
	return s
}

func (r *rawFS) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) (s fuse.Status) {
	registering(func() { s = r.RawFileSystem.Tmpfile(cancel, in, out) })
	return s
}
