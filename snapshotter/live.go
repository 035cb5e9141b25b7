//go:build linux

package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// fusectlDir is where the kernel lists FUSE connections; writing to
// <n>/abort ends connection n even while mounts of it remain.
const fusectlDir = "/sys/fs/fuse/connections"

// liveMounts holds the overlayfuse servers of this process, one per
// snapshot id. Mounting and unmounting are serialized by one lock so that a
// lazy remount can never race with the unmount of the same snapshot.
type liveMounts struct {
	mu      sync.Mutex
	servers map[string]*liveMount
	closed  bool

	opts    overlayfuse.Options
	timeout time.Duration
}

type liveMount struct {
	srv      *overlayfuse.Server
	dir      string
	conn     uint32 // fusectl connection number: the minor of the mount's st_dev
	layers   overlayfuse.Layers
	readOnly bool
}

func newLiveMounts(opts overlayfuse.Options, timeout time.Duration) *liveMounts {
	return &liveMounts{
		servers: make(map[string]*liveMount),
		opts:    opts,
		timeout: timeout,
	}
}

// has reports whether snapshot id is served by this process.
func (l *liveMounts) has(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.servers[id]
	return ok
}

// count is the number of live mounts.
func (l *liveMounts) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.servers)
}

// at returns the id and layers of the mount served at dir.
func (l *liveMounts) at(dir string) (id string, layers overlayfuse.Layers, readOnly, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, m := range l.servers {
		if m.dir == dir {
			return id, m.layers, m.readOnly, true
		}
	}
	return "", overlayfuse.Layers{}, false, false
}

// mount serves layers at dir for snapshot id. Mounting an id that is
// already served is a no-op.
func (l *liveMounts) mount(ctx context.Context, id, dir string, layers overlayfuse.Layers, readOnly bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("snapshotter is closed")
	}
	if _, ok := l.servers[id]; ok {
		return nil
	}
	opts := l.opts
	opts.ReadOnly = readOnly
	srv, err := overlayfuse.Mount(dir, layers, opts)
	if err != nil {
		return fmt.Errorf("mount overlay of %d layers at %s: %w", len(layers.Lower), dir, err)
	}
	m := &liveMount{srv: srv, dir: dir, layers: layers, readOnly: readOnly}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err == nil {
		m.conn = unix.Minor(st.Dev)
	}
	l.servers[id] = m
	log.G(ctx).WithField("id", id).WithField("layers", len(layers.Lower)).Debug("overlay mounted")
	return nil
}

// unmount ends the mount of snapshot id, if this process serves one. On
// error the mount stays registered, so the caller may try again.
func (l *liveMounts) unmount(ctx context.Context, id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	m, ok := l.servers[id]
	if !ok {
		return nil
	}
	if err := l.end(ctx, m); err != nil {
		return err
	}
	delete(l.servers, id)
	return nil
}

// unmountAll ends every mount, in parallel since each may have to wait for
// the timeout, and refuses new mounts from then on.
func (l *liveMounts) unmountAll(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	var (
		wg   sync.WaitGroup
		emu  sync.Mutex
		errs []error
	)
	for id, m := range l.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.end(ctx, m); err != nil {
				emu.Lock()
				errs = append(errs, fmt.Errorf("snapshot %s: %w", id, err))
				emu.Unlock()
			}
		}()
	}
	wg.Wait()
	clear(l.servers)
	return errors.Join(errs...)
}

// end unmounts m and waits for its server to stop. A mount that is still
// in use after the timeout (a bind mount of it left somewhere, a process
// with an open file) would keep the server alive forever, so its FUSE
// connection is aborted: remaining users see ENOTCONN, and a committed or
// removed upper directory can no longer change behind our back.
func (l *liveMounts) end(ctx context.Context, m *liveMount) error {
	done := make(chan error, 1)
	go func() { done <- m.srv.Unmount() }()
	select {
	case err := <-done:
		return err
	case <-time.After(l.timeout):
	}
	log.G(ctx).WithField("mountpoint", m.dir).Warnf("overlay still in use after %v, aborting its FUSE connection", l.timeout)
	if err := abortConnection(m.conn); err != nil {
		log.G(ctx).WithError(err).WithField("mountpoint", m.dir).Error("cannot abort FUSE connection")
	}
	select {
	case <-done:
	case <-time.After(l.timeout):
		return fmt.Errorf("overlay at %s did not stop after its FUSE connection was aborted", m.dir)
	}
	// The aborted server is gone; a mountpoint still attached is stale.
	if err := unix.Unmount(m.dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("detach %s: %w", m.dir, err)
	}
	return nil
}

// abortConnection aborts FUSE connection conn through fusectl, mounting
// fusectl first where the system has not.
func abortConnection(conn uint32) error {
	if conn == 0 {
		return errors.New("connection number unknown")
	}
	dir := filepath.Join(fusectlDir, strconv.FormatUint(uint64(conn), 10))
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := unix.Mount("fusectl", fusectlDir, "fusectl", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount fusectl at %s: %w", fusectlDir, err)
		}
	}
	f, err := os.OpenFile(filepath.Join(dir, "abort"), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString("1")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
