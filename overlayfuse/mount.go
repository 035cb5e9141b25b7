// Package overlayfuse serves an overlay of read-only lower directories and
// one writable upper directory through FUSE, in kernel overlayfs' on-disk
// format: a tree written through it mounts the same with `mount -t overlay`.
package overlayfuse

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Server is one mounted overlay.
type Server struct {
	fuse       *fuse.Server
	ofs        *overlayFS
	mountpoint string
	// ended runs once the server has stopped.
	ended sync.Once
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
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	if err := checkUmask(); err != nil {
		return nil, err
	}
	st, err := os.Stat(mountpoint)
	if err != nil {
		return nil, fmt.Errorf("mountpoint: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("mountpoint %s: not a directory", mountpoint)
	}
	ofs, err := newOverlayFS(layers, opts)
	if err != nil {
		return nil, err
	}
	root, err := ofs.newRoot()
	if err != nil {
		ofs.close()
		return nil, err
	}
	fsOpts := ofs.fsOptions()
	var raw fuse.RawFileSystem = &rawFS{RawFileSystem: fs.NewNodeFS(root, fsOpts), ofs: ofs}
	if opts.Metrics != nil {
		raw = &meteredFS{RawFileSystem: raw, m: opts.Metrics}
	}
	srv, err := fuse.NewServer(raw, mountpoint, &fsOpts.MountOptions)
	if err != nil {
		ofs.close()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		_ = srv.Unmount() // best effort: the mount failed already
		ofs.close()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	ofs.server = srv
	s := &Server{fuse: srv, ofs: ofs, mountpoint: mountpoint}
	if err := ofs.afterMount(); err != nil {
		_ = s.Unmount() // best effort: err is what the caller needs
		return nil, err
	}
	return s, nil
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
	err := s.fuse.Unmount()
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
