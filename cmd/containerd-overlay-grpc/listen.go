package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// checkAddress refuses an address that we could not serve on: a path that
// is not a socket, or a socket that a live server answers on. The daemon
// calls it before it touches its root, so a refused start leaves nothing.
// A socket left by a dead process is fine: listen replaces it.
func checkAddress(address string) error {
	st, err := os.Lstat(address)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("address: %w", err)
	}
	if st.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("address %s exists and is not a socket", address)
	}
	if c, err := net.DialTimeout("unix", address, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("address %s is in use by a running server", address)
	}
	return nil
}

// listen makes the socket's directory (0700, as only root should talk to
// us) and listens on address, replacing a socket left by a dead process.
// It checks the address again: another server may have started meanwhile.
func listen(address string) (net.Listener, error) {
	if err := checkAddress(address); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(address, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
