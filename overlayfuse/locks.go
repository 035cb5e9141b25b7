package overlayfuse

import (
	"context"
	"math"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The server keeps file locks, not the kernel: the kernel keeps them per
// FUSE inode, and a copy-up may retire a node for a new one of the same
// inode number (passthrough.go), which would drop them. Locks are kept
// per overlay inode number, which a retire keeps.
//
// Two kinds, which never conflict with each other, as on Linux: POSIX
// byte-range locks (fcntl F_SETLK, also OFD locks, whose owner is the
// open file) and flock locks (FUSE_LK_FLOCK, owned by the open file, on
// the whole file).

// heldLock is one range [start, end] an owner holds.
type heldLock struct {
	start, end uint64
	typ        uint32 // F_RDLCK or F_WRLCK
	owner      uint64
	pid        uint32
}

func (l *heldLock) overlaps(start, end uint64) bool { return l.start <= end && start <= l.end }

// lockTable holds the locks of one inode.
type lockTable struct {
	posix, flock []heldLock
	// changed is closed when a lock goes or weakens, to wake waiters;
	// waiters keep the table in the map while they wait.
	changed chan struct{}
	waiters int
}

func (t *lockTable) list(flock bool) *[]heldLock {
	if flock {
		return &t.flock
	}
	return &t.posix
}

// conflict returns a lock of another owner that keeps owner from taking
// typ on [start, end].
func (t *lockTable) conflict(flock bool, owner uint64, start, end uint64, typ uint32) *heldLock {
	for i, l := range *t.list(flock) {
		if l.owner != owner && l.overlaps(start, end) && (typ == unix.F_WRLCK || l.typ == unix.F_WRLCK) {
			return &(*t.list(flock))[i]
		}
	}
	return nil
}

// wake tells waiters that locks went.
func (t *lockTable) wake() {
	if t.changed != nil {
		close(t.changed)
		t.changed = nil
	}
}

// lockTables are the lock tables of a mount by inode number.
type lockTables struct {
	mu    sync.Mutex
	byIno map[uint64]*lockTable
	// posixOwners counts the POSIX ranges each owner holds, so that the
	// FLUSH of a close by a process without locks costs no lookup.
	posixOwners map[uint64]int
}

func (lt *lockTables) table(ino uint64) *lockTable {
	if lt.byIno == nil {
		lt.byIno = map[uint64]*lockTable{}
		lt.posixOwners = map[uint64]int{}
	}
	t := lt.byIno[ino]
	if t == nil {
		t = &lockTable{}
		lt.byIno[ino] = t
	}
	return t
}

// tidy drops the table of ino once it holds nothing.
func (lt *lockTables) tidy(ino uint64, t *lockTable) {
	if len(t.posix) == 0 && len(t.flock) == 0 && t.waiters == 0 {
		delete(lt.byIno, ino)
	}
}

// getlk reports a lock that conflicts with lk, or F_UNLCK.
func (lt *lockTables) getlk(ino, owner uint64, lk *fuse.FileLock, flock bool, out *fuse.FileLock) {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	*out = fuse.FileLock{Typ: unix.F_UNLCK}
	t := lt.byIno[ino]
	if t == nil {
		return
	}
	if c := t.conflict(flock, owner, lk.Start, lk.End, lk.Typ); c != nil {
		*out = fuse.FileLock{Start: c.start, End: c.end, Typ: c.typ, Pid: c.pid}
	}
}

// setlk takes, changes or drops owner's lock; wait: until no other
// owner's lock is in the way, or the request is interrupted.
func (lt *lockTables) setlk(ctx context.Context, ino, owner uint64, lk *fuse.FileLock, flock, wait bool) syscall.Errno {
	switch lk.Typ {
	case unix.F_RDLCK, unix.F_WRLCK, unix.F_UNLCK:
	default:
		return syscall.EINVAL
	}
	if lk.Start > lk.End {
		return syscall.EINVAL
	}
	lt.mu.Lock()
	defer lt.mu.Unlock()
	t := lt.table(ino)
	defer lt.tidy(ino, t)
	for lk.Typ != unix.F_UNLCK && t.conflict(flock, owner, lk.Start, lk.End, lk.Typ) != nil {
		if !wait {
			return syscall.EAGAIN
		}
		if t.changed == nil {
			t.changed = make(chan struct{})
		}
		ch := t.changed
		t.waiters++
		lt.mu.Unlock()
		var done bool
		select {
		case <-ch:
		case <-ctx.Done():
			done = true
		}
		lt.mu.Lock()
		t.waiters--
		if done {
			return syscall.EINTR
		}
	}
	lt.replace(t, flock, owner, lk)
	return 0
}

// replace sets owner's lock on [lk.Start, lk.End] to lk.Typ: what the
// owner held there is cut out, the new range goes in and merges with the
// owner's touching ranges of the same type.
func (lt *lockTables) replace(t *lockTable, flock bool, owner uint64, lk *fuse.FileLock) {
	list := t.list(flock)
	start, end := lk.Start, lk.End
	before := len(*list)
	var out []heldLock
	cut := false
	for _, l := range *list {
		if l.owner != owner || !l.overlaps(start, end) {
			out = append(out, l)
			continue
		}
		cut = true
		if l.start < start {
			left := l
			left.end = start - 1
			out = append(out, left)
		}
		if l.end > end {
			right := l
			right.start = end + 1
			out = append(out, right)
		}
	}
	if cut {
		// The owner's locks in the range went or may have weakened.
		t.wake()
	}
	if lk.Typ != unix.F_UNLCK {
		merged := heldLock{start: start, end: end, typ: lk.Typ, owner: owner, pid: lk.Pid}
		kept := out[:0]
		for _, l := range out {
			touches := l.owner == owner && l.typ == lk.Typ &&
				(l.overlaps(merged.start, merged.end) ||
					(l.end != math.MaxUint64 && l.end+1 == merged.start) ||
					(merged.end != math.MaxUint64 && merged.end+1 == l.start))
			if touches {
				merged.start = min(merged.start, l.start)
				merged.end = max(merged.end, l.end)
				continue
			}
			kept = append(kept, l)
		}
		out = append(kept, merged)
	}
	*list = out
	if !flock {
		lt.countOwner(owner, len(out)-before)
	}
}

func (lt *lockTables) countOwner(owner uint64, delta int) {
	if delta == 0 {
		return
	}
	if c := lt.posixOwners[owner] + delta; c > 0 {
		lt.posixOwners[owner] = c
	} else {
		delete(lt.posixOwners, owner)
	}
}

// unlockOwner drops every lock of owner (of one kind) on ino.
func (lt *lockTables) unlockOwner(ino, owner uint64, flock bool) {
	lt.setlk(context.Background(), ino, owner, &fuse.FileLock{End: math.MaxUint64, Typ: unix.F_UNLCK}, flock, false)
}

// ownerHoldsPosix reports whether owner holds a POSIX lock anywhere.
func (lt *lockTables) ownerHoldsPosix(owner uint64) bool {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	return lt.posixOwners[owner] > 0
}

// holdsPosix reports whether ino has a POSIX lock.
func (lt *lockTables) holdsPosix(ino uint64) bool {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	t := lt.byIno[ino]
	return t != nil && len(t.posix) > 0
}
