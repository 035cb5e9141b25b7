package overlayfuse

import (
	"bytes"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"syscall"
	"testing"
)

func TestToErrnoKeepsWrappedErrno(t *testing.T) {
	var buf bytes.Buffer
	ofs := &overlayFS{opts: Options{Logger: log.New(&buf, "", 0)}}
	wrapped := fmt.Errorf("copy-up of a: %w", &os.PathError{Op: "openat", Path: "a", Err: syscall.ENOSPC})
	for _, tc := range []struct {
		err  error
		want syscall.Errno
	}{
		{nil, 0},
		{syscall.ENOENT, syscall.ENOENT},
		{wrapped, syscall.ENOSPC},
		{errors.Join(errors.New("first"), syscall.EXDEV), syscall.EXDEV},
		{errors.New("no errno here"), syscall.EIO},
	} {
		if got := ofs.toErrno(tc.err); got != tc.want {
			t.Errorf("toErrno(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if buf.Len() != len("overlayfuse: EIO for: no errno here\n") || !strings.Contains(buf.String(), "no errno here") {
		t.Errorf("log = %q, want the one EIO mapping", buf.String())
	}

	// Once per message, and bounded.
	buf.Reset()
	ofs.toErrno(errors.New("no errno here"))
	if buf.Len() != 0 {
		t.Errorf("a repeated message was logged again: %q", buf.String())
	}
	for i := range 2 * maxEIOMessages {
		ofs.toErrno(fmt.Errorf("failure %d", i))
	}
	if n := strings.Count(buf.String(), "\n"); n != maxEIOMessages {
		t.Errorf("%d lines logged for %d distinct messages, want %d", n, 2*maxEIOMessages, maxEIOMessages)
	}
	if !strings.Contains(buf.String(), "further new EIO causes not logged") {
		t.Errorf("log does not say it stops: %q", buf.String())
	}
}
