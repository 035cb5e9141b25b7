package keeper

import (
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// readyFDEnv names the descriptor on which a holder started by Dial
// reports that it listens (one byte, then close).
const readyFDEnv = "OVERLAYFUSE_KEEPER_READY_FD"

// idleExit is how long a new holder waits for its first client before it
// ends (its starter died before connecting).
const idleExit = 30 * time.Second

// holder is the state of the holder process: the files it holds and the
// number of connected clients. One lock guards both, and the decision to
// exit is taken under it, so no file is ever held by a holder on its way
// out.
type holder struct {
	mu    sync.Mutex
	held  map[string][]*os.File
	conns int
	sock  string
	log   *log.Logger
}

// Serve runs the holder for root until it holds nothing and no client is
// connected: `containerd-overlay-grpc keeper --root <root>`. It must not
// die while it holds files, so it does nothing but hold them.
func Serve(root string) error {
	unix.Umask(0o077)
	logf, err := os.OpenFile(filepath.Join(root, logName), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	h := &holder{held: map[string][]*os.File{}, sock: SocketPath(root),
		log: log.New(logf, fmt.Sprintf("keeper[%d] ", os.Getpid()), log.LstdFlags)}

	// One holder per root: a new one waits here until an old one, on its
	// way out, has removed its socket.
	lock, err := os.OpenFile(filepath.Join(root, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	if err := os.Remove(h.sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: h.sock, Net: "unixpacket"})
	if err != nil {
		return err
	}
	l.SetUnlinkOnClose(false) // removed under the lock, by exit
	if err := os.Chmod(h.sock, 0o600); err != nil {
		return err
	}
	h.log.Printf("holding mounts of %s", root)
	signalReady()
	time.AfterFunc(idleExit, h.exitIfIdle)

	for {
		c, err := l.AcceptUnix()
		if err != nil {
			h.log.Printf("accept: %v", err)
			time.Sleep(100 * time.Millisecond) // out of descriptors: back off
			continue
		}
		// The socket is root's, 0600; the check also covers a socket
		// whose mode someone changed.
		if uid, pid, err := peerUID(c); err != nil || uid != 0 {
			h.log.Printf("refused client pid %d uid %d: %v", pid, uid, err)
			c.Close()
			continue
		}
		h.mu.Lock()
		h.conns++
		h.mu.Unlock()
		go h.serveConn(c)
	}
}

// signalReady tells the process that started us that we listen.
func signalReady() {
	v := os.Getenv(readyFDEnv)
	if v == "" {
		return
	}
	os.Unsetenv(readyFDEnv)
	var fd int
	if _, err := fmt.Sscanf(v, "%d", &fd); err != nil {
		return
	}
	f := os.NewFile(uintptr(fd), "ready")
	_, _ = f.Write([]byte{1})
	f.Close()
}

// serveConn answers one client until it hangs up. A bad request ends the
// connection, never the process.
func (h *holder) serveConn(c *net.UnixConn) {
	defer func() {
		if r := recover(); r != nil {
			h.log.Printf("panic serving a client: %v", r)
		}
		h.mu.Lock()
		h.conns--
		h.exitLocked()
		h.mu.Unlock()
		c.Close()
	}()
	for {
		msg, files, err := recv(c)
		if err != nil {
			if !errors.Is(err, errClosed) {
				h.log.Printf("read: %v", err)
			}
			return
		}
		if err := h.handle(c, msg, files); err != nil {
			h.log.Printf("%q: %v", msg, err)
			return
		}
	}
}

// handle answers one request; it owns files.
func (h *holder) handle(c *net.UnixConn, msg string, files []*os.File) error {
	op, id, _ := strings.Cut(msg, " ")
	if op != "keep" {
		closeFiles(files)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch op {
	case "ping":
	case "keep":
		if err := checkID(id); err != nil || len(files) != filesPerID {
			closeFiles(files)
			return send(c, fmt.Sprintf("err keep %q: want an id and %d files, got %d files", id, filesPerID, len(files)))
		}
		closeFiles(h.held[id])
		h.held[id] = files
	case "drop":
		closeFiles(h.held[id])
		delete(h.held, id)
	case "held":
		for id, files := range h.held {
			if err := send(c, "entry "+id, files...); err != nil {
				return err
			}
		}
	default:
		return send(c, fmt.Sprintf("err unknown request %q", op))
	}
	return send(c, "ok")
}

func (h *holder) exitIfIdle() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.exitLocked()
}

// exitLocked ends the process when it holds nothing and serves nobody.
// The socket goes first, while the lock still keeps a successor waiting.
func (h *holder) exitLocked() {
	if h.conns > 0 || len(h.held) > 0 {
		return
	}
	_ = os.Remove(h.sock)
	h.log.Printf("nothing held, no client: exiting")
	os.Exit(0)
}
