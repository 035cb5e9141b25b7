package overlayfuse

import (
	"syscall"
	"time"
)

// Metrics receives what a mount does, for monitoring. Its methods are
// called on the goroutines that serve requests, concurrently: they must
// be cheap and must not block.
type Metrics interface {
	// Op is one FUSE request: its opcode name (LOOKUP, CREATE, ...), the
	// time the server took to answer it and the errno it answered, 0 for
	// success.
	Op(op string, d time.Duration, errno syscall.Errno)
	// CopyUp is one object copied up: the bytes of file data copied (0
	// for anything but a regular file) and the time it took.
	CopyUp(bytes int64, d time.Duration)
	// Open is one file opened or created; passthrough: the kernel does
	// its reads and writes on the backing file, not through the server.
	Open(passthrough bool)
}
