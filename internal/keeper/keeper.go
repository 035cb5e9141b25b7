// Package keeper holds the FUSE connections of live overlay mounts outside
// the daemon, so that a crash, restart or upgrade of the daemon does not
// close them (docs/restart.md). Two back ends: a small holder process
// (containerd-overlay-grpc keeper), and systemd's file descriptor store.
package keeper

import (
	"fmt"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// Keeper holds the hand-overs of live mounts, by id.
type Keeper interface {
	// Keep holds new descriptors of h's files for id, in place of what
	// was held for it. The caller still owns h.
	Keep(id string, h overlayfuse.Handover) error
	// Drop lets go of what is held for id; an id held by nobody is fine.
	Drop(id string) error
	// Held returns what an earlier process left held, as new descriptors
	// the caller owns; they stay held until Drop. Call it once, at start,
	// before Keep.
	Held() (map[string]overlayfuse.Handover, error)
	// Close ends this process's use of the keeper; what is held stays.
	Close() error
}

// maxIDLen leaves room for ".state" in a systemd FDNAME (255 bytes).
const maxIDLen = 200

// checkID accepts the ids both back ends can carry: they name fd store
// entries, which may hold no ':' or control characters, and go in one
// space-separated protocol message.
func checkID(id string) error {
	if id == "" || len(id) > maxIDLen {
		return fmt.Errorf("keeper id %q: want 1 to %d characters", id, maxIDLen)
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '-', c == '_', c == '@':
		default:
			return fmt.Errorf("keeper id %q: character %q: want letters, digits, '.', '-', '_' or '@'", id, c)
		}
	}
	return nil
}
