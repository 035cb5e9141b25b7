package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/overlayfuse/overlayfuse/integration/harness"
	"github.com/overlayfuse/overlayfuse/integration/image"
)

// Removing a container (ctr and nerdctl) leaves no mount behind: neither the
// rootfs bind mount nor the snapshot's FUSE mount.
func TestRemoveLeavesNoMount(t *testing.T) {
	e := newEnv(t)
	importCases(t, e)
	before := mounts(t, e)

	c := startSleeper(t, e, "mnt")
	during := mounts(t, e)
	if len(during) <= len(before) {
		t.Errorf("a running container adds no mount under %s: %v", e.Dir, during)
	}
	// The root is served by the snapshotter under test: FUSE, or kernel overlay.
	fstype := map[string]string{"overlayfuse": "fuse", "overlayfs": "overlay"}[snapshotter]
	root := execIn(t, e, c, "head -1 /proc/self/mountinfo")
	if f := strings.SplitN(root, " - ", 2); len(f) != 2 || !strings.HasPrefix(f[1], fstype) {
		t.Errorf("container root mount is not %s: %s", fstype, root)
	}
	removeContainer(t, e, c)
	waitMounts(t, e, before, "after ctr removed the container")
	if out := mustCtr(t, e, "snapshots", "--snapshotter", snapshotter, "ls"); strings.Contains(out, c) {
		t.Errorf("snapshot of %s left after removal:\n%s", c, out)
	}

	mustNerdctl(t, e, "run", "--rm", "--net", "none", image.CasesName, "true")
	waitMounts(t, e, before, "after nerdctl run --rm")
}

func mounts(t *testing.T, e *harness.Env) []string {
	t.Helper()
	ms, err := e.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// waitMounts waits a little for mounts to return to want: unmounts after the
// container's exit are asynchronous in the shim.
func waitMounts(t *testing.T, e *harness.Env, want []string, when string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := mounts(t, e)
		if strings.Join(got, "\n") == strings.Join(want, "\n") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: mounts under %s\n got: %v\nwant: %v", when, e.Dir, got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
