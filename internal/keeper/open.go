package keeper

import (
	"os"
	"os/exec"

	"github.com/containerd/log"
)

// Open returns the keeper for a daemon on root: systemd's fd store when
// systemd gives us one, else the holder process of root, started with
// start if none runs.
func Open(root string, start func() *exec.Cmd) (Keeper, error) {
	if FDStoreAvailable() {
		return OpenFDStore()
	}
	if os.Getenv("NOTIFY_SOCKET") != "" {
		log.L.Warn("started by systemd without a file descriptor store (FileDescriptorStoreMax=): mounts are held by a keeper process in our cgroup, which a restart of the unit kills")
	}
	return DialHolder(root, start)
}
