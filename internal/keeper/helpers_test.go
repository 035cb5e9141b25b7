package keeper

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// The test binary plays the other processes: the holder, a daemon that
// gets killed, a daemon started by systemd.
const modeEnv = "KEEPER_TEST_MODE"

func TestMain(m *testing.M) {
	switch os.Getenv(modeEnv) {
	case "":
		os.Exit(m.Run())
	case "holder":
		if err := Serve(os.Getenv("KEEPER_TEST_ROOT")); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Exit(1)
	case "client":
		os.Exit(keepAndWait())
	case "fdstore":
		os.Exit(listHeldFDStore())
	}
	os.Exit(2)
}

// startSelf runs the test binary as the holder of root.
func startSelf(root string) func() *exec.Cmd {
	return func() *exec.Cmd {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), modeEnv+"=holder", "KEEPER_TEST_ROOT="+root)
		return cmd
	}
}

// mustNotStart fails the test if a holder has to be started.
func mustNotStart(t *testing.T) func() *exec.Cmd {
	return func() *exec.Cmd {
		t.Error("a second holder was started")
		return exec.Command("false")
	}
}

// keepAndWait keeps fds 3 and 4 as "m1", says so, and waits to be killed.
func keepAndWait() int {
	root := os.Getenv("KEEPER_TEST_ROOT")
	h, err := DialHolder(root, startSelf(root))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	if err := h.Keep("m1", overlayfuse.Handover{Dev: os.NewFile(3, "dev"), State: os.NewFile(4, "state")}); err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println("kept")
	_, _ = io.Copy(io.Discard, os.Stdin) // until killed
	return 0
}

// listHeldFDStore opens the fd store as a daemon started by systemd and
// prints what it holds: one "<id> <dev inode> <state inode>" line per id.
func listHeldFDStore() int {
	// systemd sets LISTEN_PID after the fork; we are our own systemd here.
	os.Setenv("LISTEN_PID", fmt.Sprint(os.Getpid()))
	s, err := OpenFDStore()
	if err != nil {
		fmt.Println(err)
		return 1
	}
	held, err := s.Held()
	if err != nil {
		fmt.Println(err)
		return 1
	}
	for id, h := range held {
		fmt.Println(id, inode(h.Dev), inode(h.State))
	}
	return 0
}

func inode(f *os.File) uint64 {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0
	}
	return st.Ino
}

// child runs the test binary in mode with extra files as fds 3, 4, ...,
// and returns its stdout, line by line.
func child(t *testing.T, mode string, env []string, files ...*os.File) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), modeEnv+"="+mode), env...)
	cmd.ExtraFiles = files
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, bufio.NewReader(out)
}

// memfd is a memory file holding s.
func memfd(t *testing.T, s string) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("state", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "state")
	t.Cleanup(func() { f.Close() })
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	return f
}

func readAt0(t *testing.T, f *os.File) string {
	t.Helper()
	b := make([]byte, 64)
	n, err := f.ReadAt(b, 0)
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return string(b[:n])
}

// holderPID is the pid of the holder h talks to.
func holderPID(t *testing.T, h *Holder) int {
	t.Helper()
	_, pid, err := peerUID(h.conn)
	if err != nil {
		t.Fatal(err)
	}
	return int(pid)
}

// watchExit returns a function that waits up to timeout for process pid
// to exit, and kills it when the test ends in any case.
func watchExit(t *testing.T, pid int) func(timeout time.Duration) error {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
		unix.Close(pidfd)
	})
	return func(timeout time.Duration) error {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(fds, int(timeout.Milliseconds()))
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			if n == 0 {
				return fmt.Errorf("process %d still runs after %v", pid, timeout)
			}
			return nil
		}
	}
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read from child: %v (got %q)", err, line)
	}
	return strings.TrimSuffix(line, "\n")
}
