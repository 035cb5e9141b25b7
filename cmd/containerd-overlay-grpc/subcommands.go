package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/containerd/log"

	"github.com/overlayfuse/overlayfuse/internal/keeper"
	"github.com/overlayfuse/overlayfuse/snapshotter"
)

// Subcommands besides serving.
const (
	cmdKeeper     = "keeper"
	cmdUnmountAll = "unmount-all"
)

const subcommandUsage = `
Commands:
  unmount-all [--root DIR | --config FILE]
        End for good every container mount a stopped daemon left alive
        (SIGTERM and crashes leave them to the next daemon): run it after
        stopping the daemon, when the mounts must end rather than wait for
        the next start. Processes still using them get ENOTCONN.
  keeper --root DIR
        The process that holds the mounts' FUSE connections while no daemon
        serves them; the daemon starts it when systemd's fd store is not
        available. Not meant to be run by hand.
`

// parseStatus is the exit status of a subcommand whose flags did not
// parse: 0 for -help.
func parseStatus(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}

// holderCommand starts this binary as the keeper of root.
func holderCommand(root string) func() *exec.Cmd {
	return func() *exec.Cmd {
		cmd := exec.Command("/proc/self/exe", cmdKeeper, "--root", root)
		cmd.Args[0] = os.Args[0]
		return cmd
	}
}

func runKeeper(args []string, usage io.Writer) int {
	fs := flag.NewFlagSet("containerd-overlay-grpc keeper", flag.ContinueOnError)
	fs.SetOutput(usage)
	root := fs.String("root", "", "the daemon's root")
	if err := fs.Parse(args); err != nil {
		return parseStatus(err)
	}
	if *root == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "containerd-overlay-grpc keeper: want --root DIR and nothing else")
		return 2
	}
	if err := keeper.Serve(*root); err != nil {
		fmt.Fprintf(os.Stderr, "containerd-overlay-grpc keeper: %v\n", err)
		return 1
	}
	return 0
}

func runUnmountAll(args []string, usage io.Writer) int {
	fs := flag.NewFlagSet("containerd-overlay-grpc unmount-all", flag.ContinueOnError)
	fs.SetOutput(usage)
	root := fs.String("root", "", "the daemon's root (default: the config's, or "+defaultRoot+")")
	configFile := fs.String("config", "", "the daemon's config file, for its root")
	if err := fs.Parse(args); err != nil {
		return parseStatus(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "containerd-overlay-grpc unmount-all: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	c := defaultConfig()
	if *configFile != "" {
		if err := loadConfigFile(*configFile, &c); err != nil {
			fmt.Fprintf(os.Stderr, "containerd-overlay-grpc unmount-all: %v\n", err)
			return 1
		}
	}
	if *root != "" {
		c.Root = *root
	}
	n, err := unmountAll(c.Root)
	if err != nil {
		fmt.Fprintf(os.Stderr, "containerd-overlay-grpc unmount-all: %v\n", err)
		return 1
	}
	fmt.Printf("ended %d mounts under %s\n", n, c.Root)
	return 0
}

// unmountAll ends every mount left under root, with the daemon stopped.
func unmountAll(root string) (int, error) {
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		return 0, nil // nothing was ever mounted there
	} else if err != nil {
		return 0, err
	}
	lock, err := lockRoot(root)
	if err != nil {
		return 0, fmt.Errorf("%w: stop it first", err)
	}
	defer lock.Close()
	ctx := log.WithLogger(context.Background(), log.L)
	// A holder that runs holds the connections; dropping them all lets it
	// exit. (systemd's fd store lets go of a connection once it is aborted.)
	h, err := keeper.DialRunningHolder(root)
	if err != nil {
		return 0, err
	}
	var k snapshotter.Keeper
	if h != nil {
		k = h
	}
	n, err := snapshotter.UnmountAll(ctx, root, k)
	if h != nil {
		err = errors.Join(err, h.Close())
	}
	return n, err
}
