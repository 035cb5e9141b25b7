package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is set at link time (-ldflags "-X main.version=…"); otherwise
// the module version from the build info is shown.
var version = ""

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: overlayfuse [options] [source] mountpoint

Mounts an overlay of read-only lower directories and one writable upper
directory, in kernel overlayfs' on-disk format, through FUSE.

    -h   --help            print help
    -V   --version         print version
    -d   -o debug          log every FUSE request (implies -f)
    -f                     stay in the foreground
    -s                     accepted for fuse-overlayfs compatibility, no effect
    -o lowerdir=A:B        lower layers, topmost first (required)
    -o upperdir=U          writable layer (needs workdir; none = read-only)
    -o workdir=W           scratch directory on U's filesystem
    -o ro                  mount read-only
    -o passthrough=auto|on|off
                           FUSE passthrough of file I/O (default auto)
    -o consistency=default|strict
                           strict: a fd opened read-only before a copy-up
                           sees later writes, also through mmap
    -o fsname=NAME         source shown in /proc/mounts

Generic mount options (nodev, noatime, allow_other, x-…) are accepted;
fuse-overlayfs options that change semantics (uidmapping, squash_to_root,
noxattrs, …) are refused. Unmount with "umount MOUNTPOINT" or by sending
SIGTERM to the server.
`)
}

func printVersion(w io.Writer) {
	v, fuseV := version, "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = bi.Main.Version
		}
		for _, d := range bi.Deps {
			if d.Path == "github.com/hanwen/go-fuse/v2" {
				fuseV = d.Version
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	fmt.Fprintf(w, "overlayfuse: version %s\ngo-fuse: %s\ngo: %s\n", v, fuseV, runtime.Version())
}
