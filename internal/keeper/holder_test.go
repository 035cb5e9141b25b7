package keeper

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
)

// A daemon keeps a mount's files and is killed with SIGKILL: the holder
// still has them (the very files: a pipe written through the held copy
// reaches its reader, the state reads back), hands them to the next
// daemon, lets go of them on Drop (the pipe's reader sees EOF), and exits
// once it holds nothing and the daemon hangs up.
func TestHolderKeepsAcrossKill(t *testing.T) {
	testutil.RequireRoot(t)
	root := t.TempDir()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	state := memfd(t, "state1")

	cmd, out := child(t, "client", []string{"KEEPER_TEST_ROOT=" + root}, w, state)
	if got := readLine(t, out); got != "kept" {
		t.Fatalf("client: %s", got)
	}
	w.Close()
	state.Close()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	h, err := DialHolder(root, mustNotStart(t))
	if err != nil {
		t.Fatal(err)
	}
	waitExit := watchExit(t, holderPID(t, h))
	held, err := h.Held()
	if err != nil {
		t.Fatal(err)
	}
	m, ok := held["m1"]
	if !ok || len(held) != 1 {
		t.Fatalf("held after the client's kill: %v", held)
	}
	if _, err := m.Dev.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(r, b); err != nil || string(b) != "x" {
		t.Fatalf("read through the held pipe: %q, %v", b, err)
	}
	if got := readAt0(t, m.State); got != "state1" {
		t.Fatalf("held state: %q", got)
	}
	m.Close()

	if err := h.Drop("m1"); err != nil {
		t.Fatal(err)
	}
	// Our copy is closed, the holder's dropped: the last writer is gone.
	if _, err := r.Read(b); !errors.Is(err, io.EOF) {
		t.Fatalf("read after drop: %v, want EOF", err)
	}
	if held, err := h.Held(); err != nil || len(held) != 0 {
		t.Fatalf("held after drop: %v, %v", held, err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := waitExit(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(SocketPath(root)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket after exit: %v", err)
	}
}

// A client that is not root is hung up on without an answer, even when the
// socket's mode would let it in.
func TestHolderRefusesNonRoot(t *testing.T) {
	testutil.RequireRoot(t)
	root := t.TempDir()
	for _, d := range []string{filepath.Dir(root), root} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	h, err := DialHolder(root, startSelf(root))
	if err != nil {
		t.Fatal(err)
	}
	waitExit := watchExit(t, holderPID(t, h))
	if err := os.Chmod(SocketPath(root), 0o666); err != nil {
		t.Fatal(err)
	}

	// Connect as nobody; the holder reads the credentials of connect().
	if err := syscall.Setresuid(-1, 65534, -1); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: SocketPath(root), Net: "unixpacket"})
	if err := syscall.Setresuid(-1, 0, -1); err != nil {
		panic(err) // the rest of the tests must not run as nobody
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = send(c, "held")
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if msg, files, err := recv(c); !errors.Is(err, errClosed) && !errors.Is(err, syscall.ECONNRESET) {
		closeFiles(files)
		t.Fatalf("non-root client got %q, %v; want the connection closed", msg, err)
	}

	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := waitExit(10 * time.Second); err != nil {
		t.Fatal(err)
	}
}
