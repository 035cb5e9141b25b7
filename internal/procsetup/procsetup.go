// Package procsetup sets the process-wide state an overlay server needs.
// The overlayfuse library never changes it: the commands call Setup once
// at start, before the first mount.
package procsetup

import (
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Setup clears the umask and raises RLIMIT_NOFILE. overlayfuse.Mount
// refuses to run under a non-zero umask: modes of new files come from the
// caller, already masked by its umask, and must not be masked again.
func Setup() {
	unix.Umask(0)
	RaiseFileLimit()
}

// RaiseFileLimit lifts RLIMIT_NOFILE as far as allowed. The server keeps
// open files for the nodes the kernel holds, and a big tree (find over
// 50,000 files) needs far more than a login's default of 1024 or so. Root
// may raise the hard limit up to fs.nr_open; others get their hard limit.
// Go raises only the soft limit, and only to the hard one.
func RaiseFileLimit() {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n > lim.Max {
			want := unix.Rlimit{Cur: n, Max: n}
			if unix.Setrlimit(unix.RLIMIT_NOFILE, &want) == nil {
				return
			}
		}
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		// Best effort: the fd caches size themselves to what is allowed.
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
}
