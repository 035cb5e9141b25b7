package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

const lockName = "containerd-overlay-grpc.lock"

// lockRoot takes an exclusive lock on a file in root for the life of the
// process: two daemons on one root would fight over its mounts. The kernel
// drops the lock when the process dies, so a crash leaves no stale lock.
func lockRoot(root string) (*os.File, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(root, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock root: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("root %s is in use by another containerd-overlay-grpc", root)
		}
		return nil, fmt.Errorf("lock root: %w", err)
	}
	return f, nil
}
