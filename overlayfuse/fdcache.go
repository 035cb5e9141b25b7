package overlayfuse

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// fdCache keeps the O_PATH fds of directories, which every lookup and
// listing in them uses, within a budget: a directory's realRef holds a
// file handle and a cachedFd, whose fd is opened by handle when used and
// closed when it has been idle longest and the budget is spent. So a
// mount serves any tree under a low RLIMIT_NOFILE, and no container can
// make the daemon hold an fd per directory it ever looked up.
//
// It is process-wide, as the limit is.
type fdCache struct {
	mu     sync.Mutex
	budget int
	open   int      // fds held by entries, pinned or idle
	idle   cachedFd // ring of the idle open entries, most recently used first
}

// cachedFd is one directory's entry in an fdCache.
type cachedFd struct {
	c     *fdCache
	layer *layer
	fh    unix.FileHandle
	fd    int // -1 while closed
	pins  int
	// dropped: close the fd once idle instead of caching it.
	dropped    bool
	prev, next *cachedFd // in c.idle while open and not pinned
	release    func()
}

// Budget bounds: a floor that lets a walk of a deep tree keep its path
// open, and a ceiling on what a daemon with a huge limit keeps.
const (
	minFdBudget = 16
	maxFdBudget = 1 << 16
)

var dirFds = newFdCache(maxFdBudget)

func newFdCache(budget int) *fdCache {
	c := &fdCache{budget: budget}
	c.idle.prev, c.idle.next = &c.idle, &c.idle
	return c
}

// setBudget sizes the cache from RLIMIT_NOFILE's soft limit: half of what
// the fds open now, other than the cache's, leave free. The other half is
// for open files and the fds each request opens for a moment.
func (c *fdCache) setBudget() {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) != nil {
		return
	}
	inUse := uint64(openFds())
	c.mu.Lock()
	inUse -= min(inUse, uint64(c.open))
	free := rl.Cur - min(rl.Cur, inUse)
	c.budget = int(min(max(free/2, minFdBudget), maxFdBudget))
	victims := c.evictLocked(c.budget)
	c.mu.Unlock()
	closeAll(victims)
}

// openFds counts the process's open fds.
func openFds() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}

// add makes an entry of a directory of layer l, with its handle and the fd
// it was just opened as, which the entry now owns.
func (c *fdCache) add(l *layer, fh unix.FileHandle, fd int) *cachedFd {
	e := &cachedFd{c: c, layer: l, fh: fh, fd: fd}
	e.release = e.unpin
	c.mu.Lock()
	c.open++
	c.pushLocked(e)
	victims := c.evictLocked(c.budget)
	c.mu.Unlock()
	closeAll(victims)
	return e
}

// pinLocked takes a cached fd out of the idle list for one more user.
func (e *cachedFd) pinLocked() int {
	if e.pins == 0 {
		e.c.unlinkLocked(e)
	}
	e.pins++
	return e.fd
}

// acquire returns the directory's O_PATH fd, opening it by handle if it
// is not cached, and the function that releases it. The fd stays open
// until then. A cached fd costs no syscall.
func (e *cachedFd) acquire() (int, func(), error) {
	c := e.c
	c.mu.Lock()
	if e.fd >= 0 {
		fd := e.pinLocked()
		c.mu.Unlock()
		return fd, e.release, nil
	}
	c.mu.Unlock()
	fd, err := c.retry(func() (int, error) { return openByHandle(e.layer, e.fh, unix.O_PATH) })
	if err != nil {
		return -1, nil, err
	}
	c.mu.Lock()
	if e.fd >= 0 {
		// A concurrent acquire opened it first.
		cached := e.pinLocked()
		c.mu.Unlock()
		unix.Close(fd)
		return cached, e.release, nil
	}
	e.fd, e.dropped = fd, false
	e.pins++
	c.open++
	victims := c.evictLocked(c.budget)
	c.mu.Unlock()
	closeAll(victims)
	return fd, e.release, nil
}

// unpin ends one acquire.
func (e *cachedFd) unpin() {
	c := e.c
	c.mu.Lock()
	e.pins--
	if e.pins > 0 {
		c.mu.Unlock()
		return
	}
	if e.dropped {
		fd := e.fd
		e.fd = -1
		c.open--
		c.mu.Unlock()
		unix.Close(fd)
		return
	}
	c.pushLocked(e)
	var victims []int
	if c.open > c.budget {
		victims = c.evictLocked(c.budget)
	}
	c.mu.Unlock()
	closeAll(victims)
}

// drop closes the fd now, or at its last release if it is in use: the
// node was forgotten or the ref let go. The entry stays usable: an
// acquire opens it again.
func (e *cachedFd) drop() {
	c := e.c
	c.mu.Lock()
	if e.fd < 0 {
		c.mu.Unlock()
		return
	}
	if e.pins > 0 {
		e.dropped = true
		c.mu.Unlock()
		return
	}
	c.unlinkLocked(e)
	fd := e.fd
	e.fd = -1
	c.open--
	c.mu.Unlock()
	unix.Close(fd)
}

// purge drops every entry of layer l, which is closing.
func (c *fdCache) purge(l *layer) {
	var victims []int
	c.mu.Lock()
	for e := c.idle.next; e != &c.idle; {
		next := e.next
		if e.layer == l {
			c.unlinkLocked(e)
			victims = append(victims, e.fd)
			e.fd = -1
			c.open--
		}
		e = next
	}
	c.mu.Unlock()
	closeAll(victims)
}

// retry runs open, and once more after closing every idle fd if it failed
// for want of fds.
func (c *fdCache) retry(open func() (int, error)) (int, error) {
	fd, err := open()
	if err != unix.EMFILE && err != unix.ENFILE {
		return fd, err
	}
	c.mu.Lock()
	victims := c.evictLocked(0)
	c.mu.Unlock()
	if len(victims) == 0 {
		return fd, err
	}
	closeAll(victims)
	return open()
}

// evictLocked takes least recently used idle entries out until at most
// keep fds are open, and returns their fds to close.
func (c *fdCache) evictLocked(keep int) []int {
	var victims []int
	for c.open > keep && c.idle.prev != &c.idle {
		e := c.idle.prev
		c.unlinkLocked(e)
		victims = append(victims, e.fd)
		e.fd = -1
		c.open--
	}
	return victims
}

func (c *fdCache) pushLocked(e *cachedFd) {
	e.prev, e.next = &c.idle, c.idle.next
	e.next.prev = e
	c.idle.next = e
}

func (c *fdCache) unlinkLocked(e *cachedFd) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// openByHandle opens the object fh names in layer l.
func openByHandle(l *layer, fh unix.FileHandle, flags int) (int, error) {
	for {
		fd, err := unix.OpenByHandleAt(l.fd, fh, flags|unix.O_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}
