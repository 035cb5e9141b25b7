// Package overlayfuse serves an overlay of read-only lower directories and
// one writable upper directory through FUSE, in kernel overlayfs' on-disk
// format: a tree written through it mounts the same with `mount -t overlay`.
package overlayfuse

import (
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Server is one mounted overlay.
type Server struct {
	fuse       *fuse.Server
	ofs        *overlayFS
	req        *requestFS
	mountpoint string
	// dev is this process's own fd of the mount's connection (go-fuse
	// has another, serveFd); the keeper gets dups of it.
	dev, serveFd int
	// ended runs once the server has stopped.
	ended sync.Once
	// stopped: Stop handed the mount over; Unmount must leave it.
	stopped bool
}

// Mount serves layers at mountpoint until Unmount. It returns once the
// kernel answers requests on the mount.
//
// Mount changes no process-wide state. The process umask must be 0: modes
// of new files come from the caller, already masked by its umask, and must
// not be masked again; Mount fails otherwise. A server process sets it
// once at start (syscall.Umask(0)), and raises RLIMIT_NOFILE if it can:
// the overlay sizes its fd caches to the soft limit it finds.
func Mount(mountpoint string, layers Layers, opts Options) (*Server, error) {
	s, err := newServer(mountpoint, layers, opts, nil)
	if err != nil {
		return nil, err
	}
	fsOpts := s.ofs.fsOptions()
	dev, err := mountDev(mountpoint, serveOptions(fsOpts))
	if err != nil {
		s.ofs.close()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	s.dev = dev
	if s.serveFd, err = dupFd(dev); err != nil {
		s.abort()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	srv, err := fuse.NewServer(s.req, devPath(s.serveFd), serveOptions(fsOpts))
	if err != nil {
		unix.Close(s.serveFd)
		s.abort()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	s.ofs.state.setInit(initBytes(srv.KernelSettings()))
	if s.ofs.state.hdr.mountDev, err = mountDevOf(mountpoint); err != nil {
		unix.Close(s.serveFd)
		s.abort()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	s.start(srv)
	if err := pollHack(mountpoint); err != nil {
		_ = s.Unmount() // best effort: err is what the caller needs
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	if err := s.ofs.afterMount(); err != nil {
		_ = s.Unmount() // best effort: err is what the caller needs
		return nil, err
	}
	return s, nil
}

// newServer prepares the overlay of a mount; state is the state file of
// a mount taken over, nil for a new one.
func newServer(mountpoint string, layers Layers, opts Options, state *os.File) (*Server, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	if err := checkUmask(); err != nil {
		return nil, err
	}
	// The mountpoint of a mount taken over is not looked at: any request
	// to it waits for a server, which is us.
	if state == nil {
		st, err := os.Stat(mountpoint)
		if err != nil {
			return nil, fmt.Errorf("mountpoint: %w", err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("mountpoint %s: not a directory", mountpoint)
		}
	}
	ofs, err := newOverlayFS(layers, opts)
	if err != nil {
		return nil, err
	}
	ofs.mountpoint = mountpoint
	shape := layersHash(layers, opts)
	if state == nil {
		ofs.state, err = newStateFile(shape)
	} else {
		ofs.state, err = openStateFile(state, shape)
	}
	if err != nil {
		ofs.close()
		return nil, err
	}
	ofs.cookieKey = ofs.state.hdr.cookieKey
	root, err := ofs.newRoot()
	if err != nil {
		ofs.close()
		return nil, err
	}
	raw := &rawFS{RawFileSystem: fs.NewNodeFS(root, ofs.fsOptions()), ofs: ofs}
	return &Server{ofs: ofs, req: newRequestFS(raw, ofs, opts.Metrics), mountpoint: mountpoint, dev: -1, serveFd: -1}, nil
}

// start serves srv.
func (s *Server) start(srv *fuse.Server) {
	s.fuse = srv
	s.ofs.server = srv
	go srv.Serve()
}

// abort undoes a mount that never served.
func (s *Server) abort() {
	_ = unmountDetach(s.mountpoint) // best effort: the mount failed already
	unix.Close(s.dev)
	s.ofs.close()
}

// layersHash identifies what shapes a mount's node ids and handles: a
// state file is only taken over by a server of the same layers.
func layersHash(l Layers, o Options) uint64 {
	h := fnv.New64a()
	for _, p := range append(append([]string{l.Upper, l.Work}, l.Lower...), string(o.Passthrough), string(o.Consistency)) {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	if o.ReadOnly {
		h.Write([]byte{1})
	}
	fmt.Fprint(h, o.UIDMap, o.GIDMap)
	return h.Sum64()
}

// checkUmask fails unless the process umask is 0. It reads it from
// /proc (Linux >= 4.7) rather than setting and restoring it, which would
// race with other threads creating files. The calling thread's: the main
// thread's may differ (a thread that unshared CLONE_FS and ended while
// locked leaves the main thread parked with its own).
func checkUmask() error {
	b, err := os.ReadFile("/proc/thread-self/status")
	if err != nil {
		return fmt.Errorf("read umask: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil {
				return fmt.Errorf("read umask: %q: %w", line, err)
			}
			if m != 0 {
				return fmt.Errorf("process umask is %04o, want 0: it would mask the modes callers ask for (set it once at start with syscall.Umask(0))", m)
			}
			return nil
		}
	}
	return errors.New("read umask: no Umask line in /proc/thread-self/status")
}

// Mountpoint is where the overlay is mounted.
func (s *Server) Mountpoint() string { return s.mountpoint }

// Unmount detaches the mount and releases the layers. It waits for the
// server loop to end.
func (s *Server) Unmount() error {
	if s.stopped {
		return errors.New("overlayfuse: unmount of a mount handed over (Stop)")
	}
	err := unix.Unmount(s.mountpoint, 0)
	if err != nil {
		// A busy mount still has to go: detach it lazily so no stale
		// mount is left behind.
		if derr := unmountDetach(s.mountpoint); derr == nil {
			err = nil
		}
	}
	s.fuse.Wait()
	s.ended.Do(s.ofs.end)
	s.ofs.close()
	unix.Close(s.dev)
	return err
}

// Wait blocks until the mount is unmounted (also from outside).
func (s *Server) Wait() {
	s.fuse.Wait()
	s.ended.Do(s.ofs.end)
}

// PassthroughActive reports whether file I/O is passed through to the
// backing files by the kernel.
func (s *Server) PassthroughActive() bool { return s.ofs.passthroughActive() }
