//go:build linux

package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/overlayfuse/overlayfuse/internal/testutil/mounttest"
)

// daemonBin is the daemon built once for all tests of this package.
var daemonBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "overlay-grpc-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	daemonBin = filepath.Join(dir, "containerd-overlay-grpc")
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	build := exec.Command(goTool, "build", "-o", daemonBin, "-ldflags", "-X main.version=v0.0.0-test", ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "build daemon: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// lockedBuffer collects a daemon's stderr.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type daemon struct {
	cmd    *exec.Cmd
	root   string
	addr   string
	stderr *lockedBuffer
	done   chan struct{}
	err    error // exit status, once done is closed
}

// startDaemon starts the daemon and waits until it tells systemd (our
// NOTIFY_SOCKET) that it is ready.
func startDaemon(root, addr string, args ...string) (*daemon, error) {
	notifyDir, err := os.MkdirTemp("", "notify-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(notifyDir)
	notifyPath := filepath.Join(notifyDir, "n")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	defer notify.Close()

	d := &daemon{root: root, addr: addr, stderr: new(lockedBuffer), done: make(chan struct{})}
	d.cmd = exec.Command(daemonBin, append([]string{"--root", root, "--address", addr, "--log-level", "debug"}, args...)...)
	d.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	d.cmd.Stderr = d.stderr
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()

	ready := make(chan error, 1)
	go func() {
		buf := make([]byte, 256)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				ready <- err
				return
			}
			if string(buf[:n]) == "READY=1" {
				ready <- nil
				return
			}
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			d.kill()
			return nil, err
		}
		return d, nil
	case <-d.done:
		return nil, fmt.Errorf("daemon exited before ready: %v\n%s", d.err, d.stderr)
	case <-time.After(60 * time.Second):
		d.kill()
		return nil, fmt.Errorf("daemon not ready after 60s\n%s", d.stderr)
	}
}

// stop sends sig and waits for a clean exit.
func (d *daemon) stop(sig syscall.Signal) error {
	select {
	case <-d.done:
		return fmt.Errorf("daemon already exited: %v", d.err)
	default:
	}
	_ = d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(60 * time.Second):
		d.kill()
		return fmt.Errorf("daemon did not stop on %v\n%s", sig, d.stderr)
	}
	if d.err != nil {
		return fmt.Errorf("daemon exit after %v: %v\n%s", sig, d.err, d.stderr)
	}
	return nil
}

// kill ends the daemon as a crash would: SIGKILL, no cleanup.
func (d *daemon) kill() {
	_ = d.cmd.Process.Kill()
	<-d.done
}

// dial connects to the daemon as containerd's proxy plugin does.
func dial(addr string) (snapshots.Snapshotter, func() error, error) {
	conn, err := grpc.NewClient("unix://"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "overlayfuse"), conn.Close, nil
}

// cleanupDaemon makes sure d is gone when the test ends, also on failure,
// and that nothing stays mounted under its root.
func cleanupDaemon(t testing.TB, d *daemon) {
	t.Cleanup(func() { endDaemon(t, d) })
}

// endDaemon stops d unless it has ended, ends the mounts it leaves to the
// next daemon, and checks that nothing stays mounted under its root.
func endDaemon(t testing.TB, d *daemon) {
	select {
	case <-d.done:
	default:
		if err := d.stop(syscall.SIGTERM); err != nil {
			t.Error(err)
		}
	}
	if out, err := exec.Command(daemonBin, "unmount-all", "--root", d.root).CombinedOutput(); err != nil {
		t.Errorf("unmount-all: %v\n%s", err, out)
	}
	mounttest.AssertNoMounts(t, d.root)
}

// shortTempDir is a temporary directory with a path short enough for a
// unix socket (108 bytes), removed when the test ends.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "og-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// runDaemon runs the daemon to completion (for argument errors).
func runDaemon(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(daemonBin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%v did not exit", args)
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

func writeFile(t testing.TB, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func oneLine(s string) bool {
	return strings.Count(s, "\n") == 1 && strings.HasSuffix(s, "\n")
}
