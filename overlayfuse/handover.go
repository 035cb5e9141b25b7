package overlayfuse

import (
	"errors"
	"os"
)

// Handover is what the next server of a live mount needs to take it
// over: the mount's FUSE connection and its state (docs/restart.md). A
// keeper outside the serving process holds both, so the mount outlives a
// crash of that process: while nobody serves it, the kernel queues the
// mount's requests instead of failing them.
type Handover struct {
	// Dev is the mount's /dev/fuse connection.
	Dev *os.File
	// State is the mount's state file (a memfd), kept up to date by the
	// serving process without a syscall on the request path.
	State *os.File
}

// Close closes both files.
func (h Handover) Close() error {
	var errs []error
	for _, f := range []*os.File{h.Dev, h.State} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	return errors.Join(errs...)
}

// Handover returns new descriptors of the mount's connection and state,
// for a keeper. The caller owns them (Close).
func (s *Server) Handover() (Handover, error) {
	return Handover{}, errors.New("overlayfuse: hand-over not implemented yet")
}

// Stop stops serving the mount without unmounting it, for a hand-over:
// requests wait in the kernel for the next server. It returns once no
// request is being served. The Server is done after Stop: Resume serves
// the mount again, from the same process or another.
func (s *Server) Stop() error {
	return errors.New("overlayfuse: stop for hand-over not implemented yet")
}

// Resume takes over a live mount at mountpoint from h, which a keeper held
// while its server was gone (killed, crashed or stopped). layers and opts
// must be those the mount was made with. It fails, leaving the mount as it
// was, when h is not the connection mounted at mountpoint.
func Resume(mountpoint string, layers Layers, opts Options, h Handover) (*Server, error) {
	return nil, errors.New("overlayfuse: resume not implemented yet")
}
