package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// listen makes the socket's directory (0700, as only root should talk to
// us) and listens on address, replacing a socket left by a dead process.
// A socket that still answers belongs to a live server and is kept.
func listen(address string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if st, err := os.Lstat(address); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("address %s exists and is not a socket", address)
		}
		if c, err := net.DialTimeout("unix", address, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("address %s is in use by a running server", address)
		}
		if err := os.Remove(address); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("address: %w", err)
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
