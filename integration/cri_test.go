package integration

import (
	"strings"
	"testing"

	"github.com/overlayfuse/overlayfuse/integration/harness"
)

// The example's CRI stanza, which the other tests leave unused (they run
// with CRI off: it wants CNI and a sandbox image from a registry, and slows
// every start): containerd loads its CRI plugins from the example as it is,
// and the CRI image service takes overlayfuse as its snapshotter, with the
// daemon's root (proxy_plugins exports) as the image filesystem.
func TestCRILoadsExampleStanza(t *testing.T) {
	e := newEnvWith(t, harness.Options{CRI: true})

	status := map[string]string{}
	for _, line := range strings.Split(mustCtr(t, e, "plugins", "ls"), "\n") {
		if f := strings.Fields(line); len(f) >= 3 {
			status[f[0]+"."+f[1]] = f[len(f)-1]
		}
	}
	for _, p := range []string{"io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri"} {
		if status[p] != "ok" {
			t.Errorf("plugin %s: status %q, want ok", p, status[p])
		}
	}

	log, err := e.ContainerdLog()
	if err != nil {
		t.Fatal(err)
	}
	want := `Get image filesystem path \"` + e.DaemonRoot + `\" for snapshotter \"overlayfuse\"`
	if !strings.Contains(log, want) {
		t.Errorf("containerd did not set up CRI images on overlayfuse: no %s in its log", want)
	}
	if strings.Contains(log, "Configuration migrated") {
		t.Errorf("containerd migrated the example config: it is not containerd's current version")
	}
}
