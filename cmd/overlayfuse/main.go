// Command overlayfuse mounts one overlay from the command line, with
// fuse-overlayfs' interface:
//
//	overlayfuse [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT
//
// Without -f it returns once the mount answers requests and keeps serving
// in the background until the mountpoint is unmounted.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run returns the exit status: 0 on success, 1 on any error.
func run(args []string, stdout, stderr io.Writer) int {
	c, err := parseArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "overlayfuse: %v\n", err)
		return 1
	}
	switch {
	case c.Help:
		usage(stdout)
		return 0
	case c.Version:
		printVersion(stdout)
		return 0
	}
	if err := c.resolve(); err != nil {
		fmt.Fprintf(stderr, "overlayfuse: %v\n", err)
		return 1
	}
	if ready, ok := daemonReadyPipe(); ok {
		return serveDaemon(c, ready)
	}
	if !c.Foreground {
		return startDaemon(args, stderr)
	}
	return serveForeground(c, stderr)
}
