package main

import (
	"fmt"
	"io"
	"log"
	"log/syslog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/overlayfuse/overlayfuse/internal/procsetup"
	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// serveForeground mounts and serves until unmounted or signalled.
func serveForeground(c *config, stderr io.Writer) int {
	logger := log.New(stderr, "overlayfuse: ", log.LstdFlags|log.Lmicroseconds)
	return serve(c, logger, func(err error) {
		if err != nil {
			fmt.Fprintf(stderr, "overlayfuse: %v\n", err)
		}
	})
}

// serveDaemon is the background server: it reports the mount result to
// the parent and logs to syslog, since its stderr is /dev/null.
func serveDaemon(c *config, ready *os.File) int {
	// The server must not keep the caller's working directory busy.
	_ = os.Chdir("/")
	var logger *log.Logger
	if w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "overlayfuse"); err == nil {
		logger = log.New(w, "", 0)
	} else {
		logger = log.New(io.Discard, "", 0)
	}
	return serve(c, logger, func(err error) { reportReady(ready, err) })
}

// serve mounts c, calls ready with the result and serves until the mount
// goes away. SIGTERM, SIGINT and SIGHUP unmount, as with libfuse.
func serve(c *config, logger *log.Logger, ready func(error)) int {
	// Subscribe before mounting: a signal during Mount must not kill the
	// process with the mount in place.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	// A log write to a closed pipe (`overlayfuse -d … | head`) must fail,
	// not kill the process: a thread of ours may be inside a request on
	// our own mount (go-fuse's WaitMount opens a file there), and a dying
	// process then waits for itself, unkillable, keeping the mount.
	signal.Ignore(syscall.SIGPIPE)

	procsetup.Setup()
	opts := c.Opts
	opts.Logger = logger
	if opts.Debug && len(c.Ignored) > 0 {
		logger.Printf("options without effect: %s", strings.Join(c.Ignored, ","))
	}
	srv, err := overlayfuse.Mount(c.Mountpoint, c.Layers, opts)
	ready(err)
	if err != nil {
		return 1
	}

	done := make(chan struct{})
	go func() {
		srv.Wait()
		close(done)
	}()
	select {
	case <-done:
		// umount(8) from outside.
		return 0
	case s := <-sigs:
		logger.Printf("%v: unmounting %s", s, c.Mountpoint)
		if err := srv.Unmount(); err != nil {
			logger.Printf("unmount %s: %v", c.Mountpoint, err)
			return 1
		}
		return 0
	}
}
