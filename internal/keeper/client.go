package keeper

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// Holder is a connection to the holder process of a root. While it is
// open the holder stays, even when it holds nothing.
type Holder struct {
	mu   sync.Mutex
	conn *net.UnixConn
}

var _ Keeper = (*Holder)(nil)

// closeTimeout bounds how long Close waits for the holder to hang up.
const closeTimeout = 5 * time.Second

// DialHolder connects to the holder of root, starting one with start when
// none listens. start returns the command that runs Serve(root); DialHolder
// puts it in a session of its own, with no parent-death signal, so that
// it outlives us.
func DialHolder(root string, start func() *exec.Cmd) (*Holder, error) {
	var err error
	// A holder may be on its way out (nothing held, its last client just
	// gone) as we connect: it hangs up, and the next one is started.
	for range 3 {
		var h *Holder
		if h, err = dialHolder(root); err == nil {
			return h, nil
		}
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			if err = startHolder(start); err != nil {
				return nil, err
			}
		}
	}
	return nil, fmt.Errorf("connect to keeper of %s: %w", root, err)
}

// DialRunningHolder connects to the holder of root if one runs; it
// returns (nil, nil) if none does.
func DialRunningHolder(root string) (*Holder, error) {
	h, err := dialHolder(root)
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, errPathTooLong) {
		return nil, nil
	}
	return h, err
}

// errPathTooLong: no holder can listen under this root.
var errPathTooLong = errors.New("socket path too long")

func dialHolder(root string) (*Holder, error) {
	if p := SocketPath(root); len(p) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("keeper socket %s: %w", p, errPathTooLong)
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: SocketPath(root), Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	// Only root may hold our connections.
	if uid, pid, err := peerUID(c); err != nil || uid != 0 {
		c.Close()
		return nil, fmt.Errorf("keeper socket %s: served by pid %d uid %d, want root: %v", SocketPath(root), pid, uid, err)
	}
	h := &Holder{conn: c}
	if err := h.call("ping"); err != nil {
		c.Close()
		return nil, err
	}
	return h, nil
}

// startHolder runs the holder and waits until it listens.
func startHolder(start func() *exec.Cmd) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := start()
	cmd.Dir = "/" // pin no mount
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, nil, nil
	cmd.ExtraFiles = []*os.File{w}
	cmd.Env = append(cmd.Environ(), readyFDEnv+"=3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return fmt.Errorf("start keeper: %w", err)
	}
	// Reaped by init once we are gone; until then by us.
	go func() { _ = cmd.Wait() }()
	// One byte when it listens; EOF if it failed.
	if n, _ := r.Read(make([]byte, 1)); n != 1 {
		return fmt.Errorf("keeper %v did not start (see keeper.log under its root)", cmd.Args)
	}
	return nil
}

// call sends one request and reads its one reply.
func (h *Holder) call(msg string, files ...*os.File) error {
	if err := send(h.conn, msg, files...); err != nil {
		return err
	}
	ans, got, err := recv(h.conn)
	closeFiles(got)
	if err != nil {
		return err
	}
	return reply(ans)
}

// Keep implements Keeper.
func (h *Holder) Keep(id string, ho overlayfuse.Handover) error {
	if err := checkID(id); err != nil {
		return err
	}
	if ho.Dev == nil || ho.State == nil {
		return fmt.Errorf("keep %s: hand-over lacks a file", id)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.call("keep "+id, ho.Dev, ho.State); err != nil {
		return fmt.Errorf("keep %s: %w", id, err)
	}
	return nil
}

// Drop implements Keeper.
func (h *Holder) Drop(id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.call("drop " + id); err != nil {
		return fmt.Errorf("drop %s: %w", id, err)
	}
	return nil
}

// Held implements Keeper.
func (h *Holder) Held() (map[string]overlayfuse.Handover, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	held := map[string]overlayfuse.Handover{}
	fail := func(err error) (map[string]overlayfuse.Handover, error) {
		for _, ho := range held {
			ho.Close()
		}
		return nil, fmt.Errorf("list held mounts: %w", err)
	}
	if err := send(h.conn, "held"); err != nil {
		return fail(err)
	}
	for {
		msg, files, err := recv(h.conn)
		if err != nil {
			return fail(err)
		}
		id, ok := strings.CutPrefix(msg, "entry ")
		if !ok {
			closeFiles(files)
			if err := reply(msg); err != nil {
				return fail(err)
			}
			return held, nil
		}
		if len(files) != filesPerID {
			closeFiles(files)
			return fail(fmt.Errorf("entry %s: %d files", id, len(files)))
		}
		held[id] = overlayfuse.Handover{Dev: files[0], State: files[1]}
	}
}

// Close hangs up and waits for the holder to notice: once it returns, a
// holder left with nothing to hold has exited.
func (h *Holder) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.conn.CloseWrite(); err != nil {
		h.conn.Close()
		return err
	}
	_ = h.conn.SetReadDeadline(time.Now().Add(closeTimeout))
	for {
		_, files, err := recv(h.conn)
		closeFiles(files)
		if err != nil {
			break
		}
	}
	return h.conn.Close()
}
