package keeper

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The holder speaks over a SOCK_SEQPACKET socket, one request or reply per
// packet, descriptors passed with SCM_RIGHTS:
//
//	ping              → ok
//	keep <id> +2 fds  → ok | err <text>     (the mount's dev, then state)
//	drop <id>         → ok
//	held              → entry <id> +2 fds, one per held id, then ok
//
// A client that shuts down its writing side is done; the holder exits when
// it holds nothing and no client is connected, so a full stop leaves no
// process behind.
const (
	socketName = "keeper.sock"
	lockName   = "keeper.lock"
	logName    = "keeper.log"

	filesPerID = 2 // Handover.Dev, Handover.State
	maxPacket  = 512
)

// SocketPath is where the holder for root listens.
func SocketPath(root string) string { return filepath.Join(root, socketName) }

var oobSize = unix.CmsgSpace(filesPerID * 4)

// send writes one packet with files attached.
func send(c *net.UnixConn, msg string, files ...*os.File) error {
	oob, err := rights(files)
	if err != nil {
		return err
	}
	_, _, err = c.WriteMsgUnix([]byte(msg), oob, nil)
	return err
}

// rights is the SCM_RIGHTS message passing files. It reads the
// descriptors without (*os.File).Fd, which would switch the open file,
// shared with the FUSE server's descriptor, to blocking mode.
func rights(files []*os.File) ([]byte, error) {
	if len(files) == 0 {
		return nil, nil
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fd, err := rawFD(f)
		if err != nil {
			return nil, err
		}
		fds[i] = fd
	}
	return unix.UnixRights(fds...), nil
}

// rawFD is f's descriptor, valid while f is open.
func rawFD(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var fd int
	if err := rc.Control(func(p uintptr) { fd = int(p) }); err != nil {
		return 0, err
	}
	return fd, nil
}

// errClosed is the peer's orderly end of the connection.
var errClosed = errors.New("connection closed")

// recv reads one packet and the files attached to it (close-on-exec: Go
// receives with MSG_CMSG_CLOEXEC).
func recv(c *net.UnixConn) (string, []*os.File, error) {
	buf := make([]byte, maxPacket)
	oob := make([]byte, oobSize)
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if errors.Is(err, io.EOF) {
		return "", nil, errClosed
	}
	if err != nil {
		return "", nil, err
	}
	files, ferr := parseRights(oob[:oobn])
	switch {
	case ferr != nil:
	case n == 0 && oobn == 0:
		return "", nil, errClosed
	case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
		ferr = errors.New("packet or its descriptors truncated")
	}
	if ferr != nil {
		closeFiles(files)
		return "", nil, ferr
	}
	return string(buf[:n]), files, nil
}

func parseRights(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			closeFiles(files)
			return nil, err
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "keeper"))
		}
	}
	return files, nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// reply turns a holder's answer into an error.
func reply(msg string) error {
	if msg == "ok" {
		return nil
	}
	if text, ok := strings.CutPrefix(msg, "err "); ok {
		return errors.New(text)
	}
	return fmt.Errorf("unexpected reply %q", msg)
}

// peerUID is the user of the process at the other end of c.
func peerUID(c *net.UnixConn) (uint32, int32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, err
	}
	if cerr != nil {
		return 0, 0, cerr
	}
	return cred.Uid, cred.Pid, nil
}
