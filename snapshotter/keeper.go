//go:build linux

package snapshotter

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// Keeper holds the hand-overs of live mounts outside this process
// (internal/keeper), so that a mount outlives a crash, restart or upgrade
// of the process serving it (docs/restart.md).
type Keeper interface {
	// Keep holds new descriptors of h's files for key, in place of what
	// was held for it; the caller still owns h.
	Keep(key string, h overlayfuse.Handover) error
	// Drop lets go of what is held for key.
	Drop(key string) error
	// Held returns what an earlier process left held; the caller owns
	// the files, which stay held until Drop.
	Held() (map[string]overlayfuse.Handover, error)
}

// keeperKey names a kept mount: its snapshot id and the device number of
// the mount, which tells its connection from a later mount at the same
// place.
func keeperKey(id string, dev uint64) string {
	return id + "@" + strconv.FormatUint(dev, 10)
}

func parseKeeperKey(key string) (id string, dev uint64, err error) {
	id, d, ok := strings.Cut(key, "@")
	if ok {
		dev, err = strconv.ParseUint(d, 10, 64)
	}
	if !ok || err != nil || id == "" {
		return "", 0, fmt.Errorf("kept mount %q: want <snapshot id>@<device number>", key)
	}
	return id, dev, nil
}
