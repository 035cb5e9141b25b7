// Package harness runs a private containerd (root, state and socket in one
// temporary directory) with the containerd-overlay-grpc daemon as its
// overlayfuse proxy snapshotter, and drives it with ctr and nerdctl.
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Options says where the binaries are.
type Options struct {
	BinDir    string    // containerd, ctr, containerd-shim-runc-v2, nerdctl
	Daemon    string    // containerd-overlay-grpc; empty: no daemon (baseline runs)
	ConfigExa string    // containerd config: the repository's config.toml.example
	CRI       bool      // keep containerd's CRI plugins on (off otherwise: see criPlugins)
	LogLevel  string    // daemon --log-level
	Flags     []string  // more daemon flags
	Verbose   io.Writer // if set, every ctr/nerdctl command line is echoed here
}

// Env is one private containerd and daemon.
type Env struct {
	opts          Options
	Dir           string // everything lives here; removed by Close
	Root, State   string // containerd root and state
	Address       string // containerd socket
	ConfigPath    string
	DaemonRoot    string
	DaemonAddress string
	NerdctlRoot   string
	Namespace     string // containerd namespace, unique per Env (cgroup and runc paths use it)

	containerd, daemon *proc
	buildkitd          map[string]*proc // by snapshotter
	closed             bool
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// New creates the private directory and config; Start starts the processes.
func New(opts Options) (*Env, error) {
	// Short path: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "ofi-")
	if err != nil {
		return nil, err
	}
	// runc, as the root of a user namespace, reaches the rootfs below.
	if err := os.Chmod(dir, 0o711); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	e := &Env{
		opts: opts, Dir: dir,
		Root: filepath.Join(dir, "root"), State: filepath.Join(dir, "state"),
		Address:    filepath.Join(dir, "containerd.sock"),
		ConfigPath: filepath.Join(dir, "config.toml"),
		DaemonRoot: filepath.Join(dir, "of"), DaemonAddress: filepath.Join(dir, "of.sock"),
		NerdctlRoot: filepath.Join(dir, "nerdctl"),
		Namespace:   "ofi-" + strings.TrimPrefix(filepath.Base(dir), "ofi-"),
	}
	if e.opts.LogLevel == "" {
		e.opts.LogLevel = "info"
	}
	if err := e.writeConfig(opts.ConfigExa); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return e, nil
}

// Start starts the daemon (if any) and containerd, and waits until both answer.
func (e *Env) Start() error {
	if e.opts.Daemon != "" {
		if err := e.StartDaemon(); err != nil {
			return err
		}
	}
	return e.StartContainerd()
}

// StartDaemon starts containerd-overlay-grpc and waits for its socket.
func (e *Env) StartDaemon() error {
	if e.opts.Daemon == "" {
		return errors.New("no daemon configured")
	}
	if e.daemon != nil {
		return errors.New("daemon already running")
	}
	p, err := e.spawn("daemon.log", e.opts.Daemon, append([]string{
		"--address", e.DaemonAddress, "--root", e.DaemonRoot, "--log-level", e.opts.LogLevel,
		"--containerd-address", e.Address}, e.opts.Flags...)...)
	if err != nil {
		return err
	}
	e.daemon = p
	return waitFor(p, 30*time.Second, func() error {
		c, err := net.Dial("unix", e.DaemonAddress)
		if err == nil {
			c.Close()
		}
		return err
	}, "daemon socket "+e.DaemonAddress)
}

// SetDaemon makes the next StartDaemon run bin (an upgrade).
func (e *Env) SetDaemon(bin string) { e.opts.Daemon = bin }

// DaemonLog returns the daemon's log so far (every run of it).
func (e *Env) DaemonLog() (string, error) {
	b, err := os.ReadFile(filepath.Join(e.Dir, "daemon.log"))
	return string(b), err
}

// StopDaemon stops the daemon with sig (SIGTERM: hand-over to the next
// daemon; SIGKILL: crash). Either leaves the mounts to the next daemon.
func (e *Env) StopDaemon(sig syscall.Signal) error {
	err := stop(e.daemon, sig)
	e.daemon = nil
	return err
}

// StartContainerd starts containerd and waits until ctr can talk to it.
func (e *Env) StartContainerd() error {
	if e.containerd != nil {
		return errors.New("containerd already running")
	}
	p, err := e.spawn("containerd.log", filepath.Join(e.opts.BinDir, "containerd"), "--config", e.ConfigPath)
	if err != nil {
		return err
	}
	e.containerd = p
	v := e.opts.Verbose // don't echo the polling
	e.opts.Verbose = nil
	defer func() { e.opts.Verbose = v }()
	return waitFor(p, 30*time.Second, func() error {
		_, err := e.Ctr("version")
		return err
	}, "containerd")
}

// StopContainerd stops containerd; running shims and containers stay.
func (e *Env) StopContainerd() error {
	err := stop(e.containerd, syscall.SIGTERM)
	e.containerd = nil
	return err
}

func (e *Env) spawn(logName, bin string, args ...string) (*proc, error) {
	log, err := os.OpenFile(filepath.Join(e.Dir, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = e.environ()
	// Own process group, so a ^C of the test run reaches us, not them, first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), log: log}
	go func() { cmd.Wait(); log.Close(); close(p.done) }()
	return p, nil
}

func waitFor(p *proc, timeout time.Duration, ready func() error, what string) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready: %v", what, p.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func stop(p *proc, sig syscall.Signal) error {
	if p == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(20 * time.Second):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("%s did not stop on %v, killed", p.cmd.Path, sig)
}

func (e *Env) environ() []string {
	env := []string{"PATH=" + e.opts.BinDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "CONTAINERD_") {
			env = append(env, kv)
		}
	}
	// nerdctl must not read the host's /etc/nerdctl/nerdctl.toml.
	return append(env, "NERDCTL_TOML="+filepath.Join(e.Dir, "nerdctl.toml"))
}

// Run runs bin with args, with a timeout, and returns its stdout; the error
// carries stdout and stderr.
func (e *Env) Run(timeout time.Duration, bin string, args ...string) (string, error) {
	out, _, err := e.RunStderr(timeout, bin, args...)
	return out, err
}

// RunStderr is Run that also returns stderr (BuildKit's progress).
func (e *Env) RunStderr(timeout time.Duration, bin string, args ...string) (string, string, error) {
	if e.opts.Verbose != nil {
		fmt.Fprintf(e.opts.Verbose, "+ %s %s\n", filepath.Base(bin), strings.Join(args, " "))
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = e.environ()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil {
		return out.String(), errOut.String(), fmt.Errorf("%s %s: %w\nstdout: %s\nstderr: %s", filepath.Base(bin), strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String(), errOut.String(), nil
}

// Ctr runs ctr against this containerd.
func (e *Env) Ctr(args ...string) (string, error) {
	a := append([]string{"--address", e.Address, "--namespace", e.Namespace}, args...)
	return e.Run(2*time.Minute, filepath.Join(e.opts.BinDir, "ctr"), a...)
}

// Nerdctl runs nerdctl against this containerd with snapshotter sn.
func (e *Env) Nerdctl(sn string, args ...string) (string, error) {
	a := append([]string{"--address", e.Address, "--namespace", e.Namespace,
		"--data-root", e.NerdctlRoot, "--snapshotter", sn, "--cgroup-manager", "cgroupfs"}, args...)
	return e.Run(2*time.Minute, filepath.Join(e.opts.BinDir, "nerdctl"), a...)
}

// NerdctlBuild runs nerdctl build on snapshotter sn with buildkitd host,
// and returns its output and progress (stdout, then stderr).
func (e *Env) NerdctlBuild(timeout time.Duration, sn, host string, args ...string) (string, error) {
	a := append([]string{"--address", e.Address, "--namespace", e.Namespace,
		"--data-root", e.NerdctlRoot, "--snapshotter", sn, "--cgroup-manager", "cgroupfs",
		"build", "--buildkit-host", host}, args...)
	out, progress, err := e.RunStderr(timeout, filepath.Join(e.opts.BinDir, "nerdctl"), a...)
	return out + progress, err
}

// SnapshotsDir is where snapshotter sn keeps snapshots/<id>/fs.
func (e *Env) SnapshotsDir(sn string) string {
	if sn == "overlayfs" {
		return filepath.Join(e.Root, "io.containerd.snapshotter.v1.overlayfs", "snapshots")
	}
	return filepath.Join(e.DaemonRoot, "snapshots")
}

// ContainerdLog returns containerd's log so far.
func (e *Env) ContainerdLog() (string, error) {
	b, err := os.ReadFile(filepath.Join(e.Dir, "containerd.log"))
	return string(b), err
}

// Logs returns the last n lines of the containerd, daemon and buildkitd
// logs.
func (e *Env) Logs(n int) string {
	var b strings.Builder
	bk, _ := filepath.Glob(filepath.Join(e.Dir, "buildkitd-*.log"))
	for _, name := range append([]string{"containerd.log", "daemon.log"}, bk...) {
		data, err := os.ReadFile(filepath.Join(e.Dir, filepath.Base(name)))
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		fmt.Fprintf(&b, "==== %s (last %d lines)\n%s\n", filepath.Base(name), len(lines), strings.Join(lines, "\n"))
	}
	return b.String()
}
