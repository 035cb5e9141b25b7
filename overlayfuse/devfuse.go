package overlayfuse

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The overlay mounts its /dev/fuse connection itself, rather than letting
// go-fuse do it, so that it holds the connection's fd: a keeper keeps a
// dup of it while no server runs, and the next server takes it over
// (docs/restart.md). go-fuse serves it through its /dev/fd/N mountpoint.

// mountDev opens /dev/fuse and mounts it at mountpoint as go-fuse's direct
// mount would with mo. It returns the connection's fd.
func mountDev(mountpoint string, mo *fuse.MountOptions) (int, error) {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return -1, err
	}
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	opts := []string{
		"fd=" + strconv.Itoa(fd),
		fmt.Sprintf("rootmode=%o", st.Mode&unix.S_IFMT),
		"user_id=" + strconv.Itoa(os.Geteuid()),
		"group_id=" + strconv.Itoa(os.Getegid()),
		"max_read=" + strconv.Itoa(mo.MaxWrite),
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
	for _, o := range mo.Options {
		switch o {
		case "nodev":
			flags |= unix.MS_NODEV
		case "dev":
			flags &^= unix.MS_NODEV
		case "nosuid":
			flags |= unix.MS_NOSUID
		case "suid":
			flags &^= unix.MS_NOSUID
		case "noexec":
			flags |= unix.MS_NOEXEC
		case "exec":
			flags &^= unix.MS_NOEXEC
		case "ro":
			flags |= unix.MS_RDONLY
		default:
			opts = append(opts, o)
		}
	}
	if mo.AllowOther {
		opts = append(opts, "allow_other")
	}
	source := mo.FsName
	if source == "" {
		source = mo.Name
	}
	if err := unix.Mount(source, mountpoint, "fuse."+mo.Name, flags, strings.Join(opts, ",")); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// devPath is go-fuse's mountpoint for a connection it gets as fd.
func devPath(fd int) string { return "/dev/fd/" + strconv.Itoa(fd) }

// dupFd duplicates fd, close-on-exec.
func dupFd(fd int) (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0) }

const opInit = 26 // FUSE_INIT

// initPipe stands in for the connection while a new go-fuse server reads
// the INIT the kernel sent the mount's first server, which the kernel
// never sends again. serverFd goes to go-fuse as /dev/fd/N; once INIT is
// answered, the connection's fd replaces it under the same number.
type initPipe struct {
	serverFd, peerFd int
}

func newInitPipe(init []byte) (*initPipe, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("init socketpair: %w", err)
	}
	p := &initPipe{serverFd: fds[0], peerFd: fds[1]}
	var in fuse.InitIn // go-fuse's InitIn starts with the request's header
	if len(init) != int(unsafe.Sizeof(in)) {
		p.close()
		return nil, fmt.Errorf("init replay: kept INIT has %d bytes, want %d", len(init), unsafe.Sizeof(in))
	}
	in = *(*fuse.InitIn)(unsafe.Pointer(&init[0]))
	in.Length, in.Opcode, in.Unique, in.NodeId = uint32(unsafe.Sizeof(in)), opInit, 1, 0
	if _, err := unix.Write(p.peerFd, unsafe.Slice((*byte)(unsafe.Pointer(&in)), unsafe.Sizeof(in))); err != nil {
		p.close()
		return nil, fmt.Errorf("init replay: %w", err)
	}
	return p, nil
}

// answered checks go-fuse's reply to the replayed INIT.
func (p *initPipe) answered() error {
	buf := make([]byte, 4096)
	n, err := unix.Read(p.peerFd, buf)
	if err != nil {
		return fmt.Errorf("init replay: read reply: %w", err)
	}
	var oh fuse.OutHeader
	if n < int(unsafe.Sizeof(oh)) {
		return fmt.Errorf("init replay: short reply (%d bytes)", n)
	}
	oh = *(*fuse.OutHeader)(unsafe.Pointer(&buf[0]))
	if oh.Status != 0 {
		return fmt.Errorf("init replay: server answered %v", syscall.Errno(-oh.Status))
	}
	return nil
}

// connect puts the connection dev under go-fuse's fd number.
func (p *initPipe) connect(dev int) error {
	if err := unix.Dup3(dev, p.serverFd, unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("take over connection: %w", err)
	}
	p.serverFd = -1 // go-fuse owns the number, now the connection
	return nil
}

func (p *initPipe) close() {
	if p.serverFd >= 0 {
		unix.Close(p.serverFd)
	}
	unix.Close(p.peerFd)
}

// notifyResend asks the kernel to send again every request of the
// connection a server read and never answered (protocol 7.40).
func notifyResend(dev int) error {
	oh := fuse.OutHeader{Length: uint32(unsafe.Sizeof(fuse.OutHeader{})), Status: -fuse.NOTIFY_RESEND} // go-fuse's codes are negated
	_, err := unix.Write(dev, unsafe.Slice((*byte)(unsafe.Pointer(&oh)), unsafe.Sizeof(oh)))
	return err
}

// initBytes is the INIT request the kernel sent, as the state keeps it.
func initBytes(in *fuse.InitIn) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(in)), unsafe.Sizeof(*in))...)
}

// serveOptions are go-fuse's options for serving a connection we mounted:
// no mount of its own (a direct mount would take /dev/fd/N for a path).
func serveOptions(o *fs.Options) *fuse.MountOptions {
	mo := o.MountOptions
	mo.DirectMount, mo.DirectMountStrict = false, false
	return &mo
}

// pollHack makes the kernel learn that the mount answers no POLL, as
// go-fuse does for the mounts it makes itself: otherwise a poll of a file
// of the mount from this process (the Go runtime's netpoller adds every
// file it opens) can wait for a request no free thread serves. go-fuse
// answers the lookup of this name on the root itself.
func pollHack(mountpoint string) error {
	fd, err := unix.Open(filepath.Join(mountpoint, ".go-fuse-epoll-hack"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0) // only the POLL request matters
	return nil
}
