package overlayfuse

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// cacheTimeout is how long the kernel may keep entries, attributes and
// misses: lower layers never change and every change to the upper goes
// through this mount, which keeps the kernel's caches right itself.
const cacheTimeout = 24 * time.Hour

// workSubdir is the scratch directory inside the work dir, the same one
// kernel overlayfs uses (and empties on mount).
const workSubdir = "work"

// overlayFS is the state one mount shares between its nodes.
type overlayFS struct {
	opts   Options
	eio    eioLog
	upper  *layer // nil when read-only
	lowers []*layer
	workFd int // O_PATH fd of <work>/work, -1 when read-only
	// workLockFd is the work dir, held with its in-use lock (the upper
	// layer's fd holds the upper dir's).
	workLockFd int

	server     *fuse.Server
	mountpoint string
	root       *node
	rootIno    uint64
	// cookieKey keys readdir offsets (readdir.go).
	cookieKey [2]uint64

	// fsIndex numbers the filesystems the layers live on, so that inode
	// numbers from different filesystems cannot collide.
	fsIndex map[uint64]uint64

	mu sync.Mutex
	// nodes are the live nodes by inode number: the lookup of a lower
	// hard link whose other name was copied up finds the copied node.
	nodes map[uint64]*node
	// gens holds the generation new nodes of an inode number get, once
	// it is past 1 (after a node was retired or the number reused).
	gens map[uint64]uint64
	// extraIDs and extraInos map the nodes that need an id of their own
	// to it and back (nodeid.go).
	extraIDs  map[idKey]uint64
	extraInos map[uint64]uint64
	// state is what outlives this process (state.go).
	state *stateFile
	// restoring is set while restore rebuilds nodes and handles, before
	// the server serves; ghost is the record of the stale node it asks
	// the root to look up (restore.go).
	restoring bool
	ghost     *nodeRecord
	// panicName: a lookup of it panics (set by tests of the recovery).
	panicName string

	// passthrough: the kernel takes backing files on this mount.
	passthrough bool

	// whFd is an O_PATH fd of the shared whiteout in the work dir
	// (whiteout.go), -1 until one is made.
	whMu sync.Mutex
	whFd int

	// locks are the file locks, by inode number (locks.go).
	locks lockTables

	// ids maps owners between the layers and what the mount shows.
	ids idMap

	// copyMu serializes copy-ups: parents first, each exactly once.
	copyMu sync.Mutex
	tmpSeq atomic.Uint64
}

func newOverlayFS(layers Layers, opts Options) (*overlayFS, error) {
	if len(layers.Lower) == 0 {
		return nil, errors.New("no lower layer")
	}
	if opts.ReadOnly {
		layers.Upper, layers.Work = "", ""
	}
	if (layers.Upper == "") != (layers.Work == "") {
		return nil, errors.New("upperdir and workdir go together")
	}
	ofs := &overlayFS{
		opts:       opts,
		ids:        idMap{uids: opts.UIDMap, gids: opts.GIDMap},
		workFd:     -1,
		workLockFd: -1,
		whFd:       -1,
		fsIndex:    map[uint64]uint64{},
		nodes:      map[uint64]*node{},
		gens:       map[uint64]uint64{},
	}
	fail := func(err error) (*overlayFS, error) {
		ofs.close()
		return nil, err
	}
	if layers.Upper != "" {
		up, err := openLayer(layers.Upper, true)
		if err != nil {
			return fail(err)
		}
		ofs.upper = up
		ofs.indexFS(up.dev)
		if err := lockInUse("upperdir", layers.Upper, up.fd); err != nil {
			return fail(err)
		}
		lfd, wfd, err := openWork(layers.Work, up.dev)
		if lfd >= 0 {
			ofs.workLockFd = lfd
		}
		if err != nil {
			return fail(err)
		}
		ofs.workFd = wfd
		if opts.Volatile {
			if err := markVolatile(wfd); err != nil {
				return fail(fmt.Errorf("workdir %s: volatile mark: %w", layers.Work, err))
			}
		}
	}
	for _, p := range layers.Lower {
		if p == "" {
			return fail(errors.New("empty lowerdir"))
		}
		l, err := openLayer(p, false)
		if err != nil {
			return fail(err)
		}
		ofs.lowers = append(ofs.lowers, l)
		ofs.indexFS(l.dev)
	}
	dirFds.setBudget()
	return ofs, nil
}

// openWork prepares <work>/work on the upper's filesystem and empties it
// of what an interrupted copy-up left. It returns the fd of the work dir
// that holds its in-use lock, taken before anything is emptied, and an
// O_PATH fd of <work>/work.
func openWork(work string, upperDev uint64) (lockFd, workFd int, err error) {
	wfd, err := unix.Open(work, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("open workdir %s: %w", work, err)
	}
	if err := lockInUse("workdir", work, wfd); err != nil {
		unix.Close(wfd)
		return -1, -1, err
	}
	var st unix.Stat_t
	if err := fstat(wfd, &st); err != nil {
		return wfd, -1, fmt.Errorf("stat workdir %s: %w", work, err)
	}
	if uint64(st.Dev) != upperDev {
		return wfd, -1, fmt.Errorf("workdir %s is not on the upperdir's filesystem", work)
	}
	if err := unix.Mkdirat(wfd, workSubdir, 0o700); err != nil && err != unix.EEXIST {
		return wfd, -1, fmt.Errorf("workdir %s: %w", work, err)
	}
	fd, err := openBeneath(wfd, workSubdir, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return wfd, -1, fmt.Errorf("workdir %s: %w", work, err)
	}
	if err := checkIncompat(work, fd); err != nil {
		unix.Close(fd)
		return wfd, -1, err
	}
	if err := removeChildren(fd); err != nil {
		unix.Close(fd)
		return wfd, -1, fmt.Errorf("clean workdir %s: %w", work, err)
	}
	return wfd, fd, nil
}

// lockInUse takes the exclusive lock of directory fd that marks it in
// use by a mount, as kernel overlayfs refuses an upper or work dir that
// another overlay uses (EBUSY). The lock is an flock, so it holds across
// processes and between two mounts of one process, and goes with the
// mount's fd, whatever way the mount ends.
func lockInUse(what, path string, fd int) error {
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		switch err {
		case nil:
			return nil
		case unix.EINTR:
			continue
		case unix.EWOULDBLOCK:
			return fmt.Errorf("%s %s is in use by another overlayfuse mount: %w", what, path, unix.EBUSY)
		}
		return fmt.Errorf("lock %s %s: %w", what, path, err)
	}
}

func (ofs *overlayFS) indexFS(dev uint64) {
	if _, ok := ofs.fsIndex[dev]; !ok {
		ofs.fsIndex[dev] = uint64(len(ofs.fsIndex))
	}
}

// ino maps a real inode number to the overlay's: the first filesystem's
// numbers pass unchanged, others get their index in the top bits.
func (ofs *overlayFS) ino(dev, ino uint64) uint64 {
	return ino ^ ofs.fsIndex[dev]<<56
}

// end runs once the server has stopped, by an unmount, from outside too,
// or an aborted connection: the upper and work dirs are free for the next
// mount from then on, as after a crash.
func (ofs *overlayFS) end() {
	ofs.endVolatile()
	// Best effort: closing the fds releases the locks anyway.
	if ofs.upper != nil && ofs.upper.fd >= 0 {
		_ = unix.Flock(ofs.upper.fd, unix.LOCK_UN)
	}
	if ofs.workLockFd >= 0 {
		_ = unix.Flock(ofs.workLockFd, unix.LOCK_UN)
	}
}

func (ofs *overlayFS) close() {
	ofs.state.close()
	ofs.upper.close()
	for _, l := range ofs.lowers {
		l.close()
	}
	for _, fd := range []*int{&ofs.workFd, &ofs.whFd, &ofs.workLockFd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

func (ofs *overlayFS) readOnly() bool { return ofs.upper == nil }

// fdatasync flushes fd's data, unless the mount is volatile.
func (ofs *overlayFS) fdatasync(fd int) error {
	if ofs.opts.Volatile {
		return nil
	}
	return unix.Fdatasync(fd)
}

func (ofs *overlayFS) fsOptions() *fs.Options {
	timeout := cacheTimeout
	return &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:        true,
			Options:           ofs.mountOptions(),
			FsName:            ofs.opts.FsName,
			Name:              "overlayfuse",
			DirectMountStrict: true,
			MaxWrite:          1 << 20,
			Debug:             ofs.opts.Debug,
			Logger:            ofs.opts.Logger,
			// Depth 1 lets kernel overlayfs stack on our mount, as
			// containers' own overlay mounts do.
			MaxStackDepth:        1,
			DisabledCapabilities: ofs.disabledCaps(),
			// The kernel checks and caches POSIX ACLs itself, instead
			// of asking for them at every `ls -l`.
			EnableAcl: true,
			// We drop privileges on write ourselves (killpriv.go), so
			// the kernel need not ask for security.capability first.
			ExtraCapabilities: fuse.CAP_HANDLE_KILLPRIV_V2,
			// Locks are kept by inode number, so that they hold across
			// the retire of a node at copy-up (locks.go).
			EnableLocks: true,
			// Lets the kernel idmap the mount (needs default_permissions).
			IDMappedMount: ofs.ids.active(),
		},
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		NullPermissions: true,
		// Node ids are inode numbers, the same in every server of the
		// mount (docs/restart.md, nodeid.go).
		ExternalNodeID: true,
		RootStableAttr: &fs.StableAttr{Ino: ofs.rootIno, Gen: 1},
		Logger:         ofs.opts.Logger,
	}
}

func (ofs *overlayFS) mountOptions() []string {
	o := []string{"default_permissions", "suid", "dev"}
	if ofs.readOnly() {
		o = append(o, "ro")
	}
	// go-fuse applies the flags in order: the caller's come last and win.
	return append(o, ofs.opts.MountFlags...)
}

func (ofs *overlayFS) newRoot() (*node, error) {
	top := ofs.topLayer()
	var st unix.Stat_t
	if err := fstat(top.fd, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", top.path, err)
	}
	n := ofs.newNode(noRef, nil)
	var layers []*layer
	if ofs.upper != nil {
		layers = append(layers, ofs.upper)
	}
	layers = append(layers, ofs.lowers...)
	for _, l := range layers {
		fd, err := openBeneath(l.fd, ".", unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			n.fds.closeAll()
			return nil, fmt.Errorf("open %s: %w", l.path, err)
		}
		r := realRef{layer: l, fd: fd}
		n.fds.add(r)
		if l.upper {
			n.upper = r
			continue
		}
		n.lowers = append(n.lowers, r)
		opaque, err := isOpaque(fd)
		if err != nil {
			n.fds.closeAll()
			return nil, fmt.Errorf("%s: read %s: %w", l.path, opaqueXattr, err)
		}
		if opaque {
			break
		}
	}
	ofs.root = n
	ofs.rootIno = ofs.ino(st.Dev, st.Ino)
	n.ino = ofs.rootIno
	return n, nil
}

func (ofs *overlayFS) topLayer() *layer {
	if ofs.upper != nil {
		return ofs.upper
	}
	return ofs.lowers[0]
}

func (ofs *overlayFS) disabledCaps() uint64 {
	if ofs.opts.Passthrough == PassthroughOff {
		return fuse.CAP_PASSTHROUGH
	}
	return 0
}

func (ofs *overlayFS) afterMount() error {
	if err := ofs.checkIDMapped(); err != nil {
		return err
	}
	if err := ofs.probePassthrough(); err != nil {
		if ofs.opts.Passthrough == PassthroughOn {
			return fmt.Errorf("passthrough=on: %w", err)
		}
		ofs.opts.Logger.Printf("overlayfuse: no FUSE passthrough, serving file I/O in process: %v", err)
	}
	return nil
}

func (ofs *overlayFS) passthroughActive() bool { return ofs.passthrough }

// tmpName names a fresh scratch entry in the work dir.
func (ofs *overlayFS) tmpName() string {
	return "#" + strconv.FormatUint(ofs.tmpSeq.Add(1), 16)
}

func (ofs *overlayFS) unregister(n *node) {
	ofs.mu.Lock()
	if ofs.nodes[n.ino] == n {
		delete(ofs.nodes, n.ino)
	}
	ofs.dropNodeID(n)
	ofs.mu.Unlock()
}

func (ofs *overlayFS) liveNode(ino uint64) *node {
	ofs.mu.Lock()
	defer ofs.mu.Unlock()
	return ofs.nodes[ino]
}
