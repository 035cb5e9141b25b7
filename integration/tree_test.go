package integration

import (
	"testing"

	"github.com/overlayfuse/overlayfuse/integration/image"
)

// The merged tree of the cases image, as seen inside a container: whiteouts,
// opaque directories, re-added entries, hard links, symlinks, modes, owners.
func TestCtrRunTree(t *testing.T) {
	e := newEnv(t)
	importCases(t, e)
	out := mustCtr(t, e, "run", "--rm", "--snapshotter", snapshotter, image.CasesName, id("tree"),
		"/bin/sh", "-c", image.CheckScript)
	sameLines(t, "ctr run", out, image.CasesExpected)
}

func TestNerdctlRunTree(t *testing.T) {
	e := newEnv(t)
	mustNerdctl(t, e, "load", "-i", casesTar)
	out := mustNerdctl(t, e, "run", "--rm", "--net", "none", image.CasesName, "/bin/sh", "-c", image.CheckScript)
	sameLines(t, "nerdctl run", out, image.CasesExpected)
}
