package overlayfuse

import (
	"errors"
	"fmt"
	"os"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
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
	dev, err := dupFd(s.dev)
	if err != nil {
		return Handover{}, fmt.Errorf("hand-over: %w", err)
	}
	state, err := s.ofs.state.dup()
	if err != nil {
		unix.Close(dev)
		return Handover{}, fmt.Errorf("hand-over: %w", err)
	}
	return Handover{Dev: os.NewFile(uintptr(dev), "/dev/fuse"), State: state}, nil
}

// Stop stops serving the mount without unmounting it, for a hand-over:
// requests wait in the kernel for the next server. It returns once no
// request is being served. The Server is done after Stop: Resume serves
// the mount again, in another process (a request this one took after
// Stop stays unanswered until the kernel resends it to the next server,
// which it does once this process has exited).
func (s *Server) Stop() error {
	s.req.stop()
	// Readers that come back for another request find a connection that
	// was never mounted (EPERM) and end.
	if dead, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
		_ = unix.Dup3(dead, s.serveFd, unix.O_CLOEXEC) // best effort: parked requests are resent anyway
		unix.Close(dead)
	}
	s.stopped = true
	s.ended.Do(s.ofs.end)
	return nil
}

// Resume takes over a live mount at mountpoint from h, which a keeper held
// while its server was gone (killed, crashed or stopped). layers and opts
// must be those the mount was made with. It fails, leaving the mount as it
// was, when h is not the connection mounted at mountpoint or its state
// was made for other layers. The caller keeps h.
func Resume(mountpoint string, layers Layers, opts Options, h Handover) (*Server, error) {
	if h.Dev == nil || h.State == nil {
		return nil, errors.New("resume: incomplete hand-over")
	}
	stateFd, err := dupFd(int(h.State.Fd()))
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	s, err := newServer(mountpoint, layers, opts, os.NewFile(uintptr(stateFd), "overlayfuse-state"))
	if err != nil {
		return nil, fmt.Errorf("resume %s: %w", mountpoint, err)
	}
	fail := func(err error) (*Server, error) {
		s.ofs.close()
		if s.dev >= 0 {
			unix.Close(s.dev)
		}
		return nil, fmt.Errorf("resume %s: %w", mountpoint, err)
	}
	if dev, err := mountDevOf(mountpoint); err != nil {
		return fail(err)
	} else if dev != s.ofs.state.hdr.mountDev {
		return fail(fmt.Errorf("the mount there (device %d:%d) is not the hand-over's", unix.Major(dev), unix.Minor(dev)))
	}
	if s.dev, err = dupFd(int(h.Dev.Fd())); err != nil {
		return fail(err)
	}
	pipe, err := newInitPipe(s.ofs.state.initBytes())
	if err != nil {
		return fail(err)
	}
	defer pipe.close()
	fsOpts := s.ofs.fsOptions()
	srv, err := fuse.NewServer(s.req, devPath(pipe.serverFd), serveOptions(fsOpts))
	if err != nil {
		return fail(err)
	}
	if err := pipe.answered(); err != nil {
		return fail(err)
	}
	s.serveFd = pipe.serverFd
	if err := pipe.connect(s.dev); err != nil {
		return fail(err)
	}
	s.ofs.server = srv
	if err := s.ofs.afterMount(); err != nil {
		return fail(err)
	}
	if err := s.ofs.restoreSafely(s.req); err != nil {
		return fail(err)
	}
	s.start(srv)
	if srv.KernelSettings().Flags64()&fuse.CAP_HAS_RESEND != 0 {
		if err := notifyResend(s.dev); err != nil {
			s.ofs.opts.Logger.Printf("overlayfuse: %s: ask the kernel to resend requests: %v", mountpoint, err)
		}
	}
	return s, nil
}

// mountDevOf is the device number of the mount at mountpoint, read from
// the mount table: a stat of the mount would wait for a server.
func mountDevOf(mountpoint string) (uint64, error) {
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(mountpoint))
	if err != nil {
		return 0, err
	}
	if len(infos) == 0 {
		return 0, fmt.Errorf("%s is not mounted", mountpoint)
	}
	m := infos[len(infos)-1] // the top of the mounts stacked there
	return unix.Mkdev(uint32(m.Major), uint32(m.Minor)), nil
}
