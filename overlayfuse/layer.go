package overlayfuse

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// layer is one directory of the overlay, held open by an O_PATH fd of its
// root: every later access walks from that fd, never from a path string.
type layer struct {
	path  string
	fd    int
	dev   uint64
	upper bool
}

func openLayer(path string, upper bool) (*layer, error) {
	// O_RDONLY, not O_PATH: open_by_handle_at takes it as its mount fd.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open layer %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat layer %s: %w", path, err)
	}
	return &layer{path: path, fd: fd, dev: uint64(st.Dev), upper: upper}, nil
}

func (l *layer) close() {
	if l != nil && l.fd >= 0 {
		unix.Close(l.fd)
		l.fd = -1
	}
}
