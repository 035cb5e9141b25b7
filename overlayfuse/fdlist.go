package overlayfuse

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// fdList holds the fds a node keeps for its life: the root's, and the
// directories' of a layer without file handles, which cannot be opened
// again (the others are in dirFds, fdcache.go). They are closed by a
// cleanup once the node is unreachable, not when the kernel forgets it:
// go-fuse can still give a forgotten node back to the kernel for a lookup
// that found it just before the forget. A node that go-fuse drops for an
// equal one it already had is cleaned up the same way.
type fdList struct {
	mu  sync.Mutex
	fds []int
}

// nodeFds counts the fds held by nodes, to ask for a collection when many
// wait for one.
var (
	nodeFds    atomic.Int64
	lastGC     atomic.Int64
	gcAboveFds int64 = 4096
)

func (ofs *overlayFS) newNode(upper realRef, lowers []realRef) *node {
	n := &node{ofs: ofs, upper: upper, lowers: lowers, fds: &fdList{}}
	n.fds.add(upper)
	for _, l := range lowers {
		n.fds.add(l)
	}
	runtime.AddCleanup(n, func(l *fdList) { l.closeAll() }, n.fds)
	return n
}

// dropFds closes the node's cached directory fds (realRef.dropFd).
func (n *node) dropFds() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.upper.dropFd()
	for _, r := range n.lowers {
		r.dropFd()
	}
}

func (l *fdList) add(r realRef) {
	if r.fd < 0 {
		return
	}
	l.mu.Lock()
	l.fds = append(l.fds, r.fd)
	l.mu.Unlock()
	nodeFds.Add(1)
}

func (l *fdList) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, fd := range l.fds {
		unix.Close(fd)
	}
	nodeFds.Add(-int64(len(l.fds)))
	l.fds = nil
}

// collectSoon runs a collection, at most once a second, when nodes hold
// many fds: forgotten nodes give theirs back only when collected.
func collectSoon() {
	if nodeFds.Load() < gcAboveFds {
		return
	}
	now := time.Now().UnixNano()
	last := lastGC.Load()
	if now-last < int64(time.Second) || !lastGC.CompareAndSwap(last, now) {
		return
	}
	go runtime.GC()
}
