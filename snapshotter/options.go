package snapshotter

import (
	"fmt"
	"time"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// config collects what the Opts set.
type config struct {
	asyncRemove    bool
	passthrough    overlayfuse.Passthrough
	consistency    overlayfuse.Consistency
	unmountTimeout time.Duration
	fuseDebug      bool
	metrics        overlayfuse.Metrics
	keeper         Keeper
	// resume takes over a kept mount; tests replace overlayfuse.Resume.
	resume func(string, overlayfuse.Layers, overlayfuse.Options, overlayfuse.Handover) (*overlayfuse.Server, error)
}

// Opt configures the snapshotter.
type Opt func(*config) error

// AsynchronousRemove leaves the directories of removed snapshots for
// Cleanup. The FUSE mount of a removed snapshot still ends in Remove.
func AsynchronousRemove(c *config) error {
	c.asyncRemove = true
	return nil
}

// WithPassthrough selects FUSE passthrough for every overlay mount;
// NewSnapshotter validates it.
func WithPassthrough(p overlayfuse.Passthrough) Opt {
	return func(c *config) error {
		c.passthrough = p
		return nil
	}
}

// WithConsistency selects the consistency mode of every overlay mount;
// NewSnapshotter validates it.
func WithConsistency(m overlayfuse.Consistency) Opt {
	return func(c *config) error {
		c.consistency = m
		return nil
	}
}

// WithUnmountTimeout bounds how long ending a mount may wait for its last
// user (a leftover bind mount, an open file) before the FUSE connection is
// aborted.
func WithUnmountTimeout(d time.Duration) Opt {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("unmount timeout %v: must be positive", d)
		}
		c.unmountTimeout = d
		return nil
	}
}

// WithFUSEDebug logs every FUSE request of every mount.
func WithFUSEDebug(c *config) error {
	c.fuseDebug = true
	return nil
}

// WithMetrics reports the FUSE requests, copy-ups and opens of every
// overlay mount to m.
func WithMetrics(m overlayfuse.Metrics) Opt {
	return func(c *config) error {
		c.metrics = m
		return nil
	}
}

// WithKeeper hands the connection of every overlay mount to k, so that the
// mount outlives this process: the next snapshotter on the same root takes
// it over instead of mounting again, and its users notice nothing. Close
// ends the mounts (and drops them from k); HandOver leaves them to the next
// process.
func WithKeeper(k Keeper) Opt {
	return func(c *config) error {
		c.keeper = k
		return nil
	}
}
