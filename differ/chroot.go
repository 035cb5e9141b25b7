//go:build linux

package differ

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// inRoot runs fn on an OS thread of its own whose root directory is dir,
// so that every path fn resolves, symlinks and ".." included, stays
// inside dir: a container that still writes its upper dir cannot make us
// read a host file into a layer. The thread is never given back to the
// Go scheduler; it ends with fn's goroutine.
func inRoot(dir *os.File, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Only this thread's root and working directory change.
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare fs: %w", err)
			return
		}
		if err := unix.Fchdir(int(dir.Fd())); err != nil {
			errc <- fmt.Errorf("chdir %s: %w", dir.Name(), err)
			return
		}
		if err := unix.Chroot("."); err != nil {
			errc <- fmt.Errorf("chroot %s: %w", dir.Name(), err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
