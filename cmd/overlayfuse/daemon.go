package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// readyEnv names the fd on which a background server reports whether its
// mount succeeded. It is set only for the re-executed child.
const readyEnv = "_OVERLAYFUSE_READY_FD"

// readyOK is the line a child writes once the mount answers requests;
// anything else is its error line.
const readyOK = "ok"

// startDaemon re-executes the command in a new session and returns once the
// child has mounted (0) or failed (1, with the child's error line). Go
// cannot fork without exec, so this replaces libfuse's fuse_daemonize.
func startDaemon(args []string, stderr io.Writer) int {
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(stderr, "overlayfuse: %v\n", err)
		return 1
	}
	defer r.Close()
	// /proc/self/exe still works if the binary was replaced meanwhile;
	// argv[0] stays ours so ps shows a recognisable name.
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Args[0] = os.Args[0]
	// ExtraFiles[0] is fd 3 in the child.
	cmd.ExtraFiles = []*os.File{w}
	cmd.Env = append(os.Environ(), readyEnv+"=3")
	// Setsid detaches from the terminal and from the caller's process
	// group, so ^C or a SIGHUP to the shell leaves the server alone. The
	// standard streams stay /dev/null: a caller reading our stderr (a test,
	// mount(8)) must see EOF when we exit, not when the server does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		fmt.Fprintf(stderr, "overlayfuse: start server: %v\n", err)
		return 1
	}
	w.Close() // so a dying child gives EOF

	line, _ := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSuffix(line, "\n")
	if line == readyOK {
		_ = cmd.Process.Release()
		return 0
	}
	werr := cmd.Wait()
	if line == "" {
		line = fmt.Sprintf("overlayfuse: server exited before the mount was ready (%v)", werr)
	}
	fmt.Fprintln(stderr, line)
	return 1
}

// daemonReadyPipe returns the readiness pipe when this process is the
// re-executed background server.
func daemonReadyPipe() (*os.File, bool) {
	v, ok := os.LookupEnv(readyEnv)
	if !ok {
		return nil, false
	}
	// Programs run later from inside the mount must not inherit it.
	os.Unsetenv(readyEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, false
	}
	return os.NewFile(uintptr(fd), "ready"), true
}

// reportReady tells the waiting parent how the mount went, on one line.
func reportReady(ready *os.File, err error) {
	msg := readyOK
	if err != nil {
		msg = "overlayfuse: " + strings.ReplaceAll(err.Error(), "\n", "; ")
	}
	fmt.Fprintln(ready, msg)
	ready.Close()
}
