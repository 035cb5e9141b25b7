package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// StartBuildkitd starts a buildkitd whose containerd worker builds in this
// containerd's namespace on snapshotter sn (no OCI worker), and returns
// its address for nerdctl build --buildkit-host. Close stops it.
func (e *Env) StartBuildkitd(sn string) (string, error) {
	if e.buildkitd[sn] != nil {
		return "", fmt.Errorf("buildkitd for %s already running", sn)
	}
	root := filepath.Join(e.Dir, "buildkit-"+sn)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", err
	}
	// An empty config: the host's /etc/buildkit/buildkitd.toml must not count.
	config := filepath.Join(root, "buildkitd.toml")
	if err := os.WriteFile(config, nil, 0o644); err != nil {
		return "", err
	}
	sock := filepath.Join(root, "buildkitd.sock")
	host := "unix://" + sock
	p, err := e.spawn("buildkitd-"+sn+".log", filepath.Join(e.opts.BinDir, "buildkitd"),
		"--config", config, "--root", root, "--addr", host,
		"--oci-worker=false", "--containerd-worker=true",
		"--containerd-worker-addr", e.Address,
		"--containerd-worker-snapshotter", sn,
		"--containerd-worker-namespace", e.Namespace,
		// No CNI here: RUN steps share the host's network namespace.
		"--containerd-worker-net", "host")
	if err != nil {
		return "", err
	}
	if e.buildkitd == nil {
		e.buildkitd = map[string]*proc{}
	}
	e.buildkitd[sn] = p
	v := e.opts.Verbose // don't echo the polling
	e.opts.Verbose = nil
	defer func() { e.opts.Verbose = v }()
	return host, waitFor(p, time.Minute, func() error {
		_, err := e.Run(10*time.Second, filepath.Join(e.opts.BinDir, "buildctl"), "--addr", host, "debug", "workers")
		return err
	}, "buildkitd")
}

// stopBuildkitd stops every buildkitd, which holds leases and containers
// of containerd, before containerd goes.
func (e *Env) stopBuildkitd() error {
	var first error
	for sn, p := range e.buildkitd {
		if err := stop(p, syscall.SIGTERM); err != nil && first == nil {
			first = err
		}
		delete(e.buildkitd, sn)
	}
	return first
}
