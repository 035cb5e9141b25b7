// Package overlayfuse serves an overlay of read-only lower directories and
// one writable upper directory through FUSE, in kernel overlayfs' on-disk
// format: a tree written through it mounts the same with `mount -t overlay`.
package overlayfuse

import (
	"fmt"
	"os"
	"sync"
	"syscall"

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
func Mount(mountpoint string, layers Layers, opts Options) (*Server, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	st, err := os.Stat(mountpoint)
	if err != nil {
		return nil, fmt.Errorf("mountpoint: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("mountpoint %s: not a directory", mountpoint)
	}
	// Modes of new files come from the caller, already masked by its
	// umask; the daemon's own must not mask them again.
	syscall.Umask(0)
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
		_ = srv.Unmount()
		ofs.close()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	ofs.server = srv
	s := &Server{fuse: srv, ofs: ofs, mountpoint: mountpoint}
	if err := ofs.afterMount(); err != nil {
		_ = s.Unmount()
		return nil, err
	}
	return s, nil
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
