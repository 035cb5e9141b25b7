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
	keeper  Keeper // nil: mounts end with this process
	resume  func(string, overlayfuse.Layers, overlayfuse.Options, overlayfuse.Handover) (*overlayfuse.Server, error)
}

type liveMount struct {
	srv *overlayfuse.Server
	dir string
	dev uint64 // the mount's st_dev; its minor is the fusectl connection number
	// kept is the mount's key in the keeper; empty if not kept.
	kept string
	// layers and readOnly are what it serves, for the differ.
	layers   overlayfuse.Layers
	readOnly bool
}

func newLiveMounts(opts overlayfuse.Options, timeout time.Duration, k Keeper) *liveMounts {
	return &liveMounts{
		servers: make(map[string]*liveMount),
		opts:    opts,
		timeout: timeout,
		keeper:  k,
		resume:  overlayfuse.Resume,
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

// mountParams are what differs between the mounts of one snapshotter.
type mountParams struct {
	readOnly       bool
	uidMap, gidMap []overlayfuse.IDMapping
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
func (l *liveMounts) mount(ctx context.Context, id, dir string, layers overlayfuse.Layers, p mountParams) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("snapshotter is closed")
	}
	if _, ok := l.servers[id]; ok {
		return nil
	}
	opts := l.opts
	opts.ReadOnly = p.readOnly
	opts.UIDMap, opts.GIDMap = p.uidMap, p.gidMap
	srv, err := overlayfuse.Mount(dir, layers, opts)
	if err != nil {
		return fmt.Errorf("mount overlay of %d layers at %s: %w", len(layers.Lower), dir, err)
	}
	m := &liveMount{srv: srv, dir: dir, layers: layers, readOnly: p.readOnly}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err == nil {
		m.dev = st.Dev
	}
	l.keep(ctx, id, m)
	l.servers[id] = m
	log.G(ctx).WithField("id", id).WithField("layers", len(layers.Lower)).Debug("overlay mounted")
	return nil
}

// resumeMount takes over the kept mount of snapshot id at dir, whose
// device number is dev, from h.
func (l *liveMounts) resumeMount(ctx context.Context, id, dir string, layers overlayfuse.Layers, p mountParams, dev uint64, h overlayfuse.Handover) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.servers[id]; ok {
		return fmt.Errorf("snapshot %s is served already", id)
	}
	opts := l.opts
	opts.ReadOnly = p.readOnly
	opts.UIDMap, opts.GIDMap = p.uidMap, p.gidMap
	srv, err := l.resume(dir, layers, opts, h)
	if err != nil {
		return fmt.Errorf("resume overlay at %s: %w", dir, err)
	}
	m := &liveMount{srv: srv, dir: dir, dev: dev, layers: layers, readOnly: p.readOnly}
	// The new server's hand-over replaces the one held.
	l.keep(ctx, id, m)
	l.servers[id] = m
	log.G(ctx).WithField("id", id).Debug("overlay resumed")
	return nil
}

// keep hands m's connection to the keeper. A mount that cannot be kept
// still works; it ends with this process, as without a keeper.
func (l *liveMounts) keep(ctx context.Context, id string, m *liveMount) {
	if l.keeper == nil {
		return
	}
	lg := log.G(ctx).WithField("id", id).WithField("mountpoint", m.dir)
	h, err := m.srv.Handover()
	if err != nil {
		lg.WithError(err).Warn("overlay mount not kept: it ends with this process")
		return
	}
	defer h.Close()
	key := keeperKey(id, m.dev)
	if err := l.keeper.Keep(key, h); err != nil {
		lg.WithError(err).Warn("overlay mount not kept: it ends with this process")
		return
	}
	m.kept = key
}

// drop tells the keeper that m ended.
func (l *liveMounts) drop(ctx context.Context, m *liveMount) {
	if m.kept == "" {
		return
	}
	if err := l.keeper.Drop(m.kept); err != nil {
		log.G(ctx).WithError(err).WithField("mountpoint", m.dir).Warn("cannot drop ended mount from keeper; the next start drops it")
	}
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
	l.drop(ctx, m)
	delete(l.servers, id)
	return nil
}

// unmountAll ends every mount, in parallel since each may have to wait for
// the timeout, and refuses new mounts from then on.
func (l *liveMounts) unmountAll(ctx context.Context) error {
	return l.closeAll(func(m *liveMount) error {
		if err := l.end(ctx, m); err != nil {
			return err
		}
		l.drop(ctx, m)
		return nil
	})
}

// handOver stops serving every kept mount, leaving it to the next process
// (which resumes it from the keeper), ends the others, and refuses new
// mounts from then on.
func (l *liveMounts) handOver(ctx context.Context) error {
	return l.closeAll(func(m *liveMount) error {
		if m.kept == "" {
			return l.end(ctx, m)
		}
		// Not stopped, it still goes on when this process ends: the next
		// process takes it over as after a crash.
		if err := m.srv.Stop(); err != nil {
			log.G(ctx).WithError(err).WithField("mountpoint", m.dir).Warn("cannot stop overlay for hand-over; the next process takes it over as after a crash")
		}
		return nil
	})
}

// closeAll runs fn on every mount in parallel (each may have to wait),
// forgets them, and refuses new mounts from then on.
func (l *liveMounts) closeAll(fn func(*liveMount) error) error {
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
			if err := fn(m); err != nil {
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
	if err := abortConnection(unix.Minor(m.dev)); err != nil {
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
