package integration

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/overlayfuse/overlayfuse/integration/harness"
	"github.com/overlayfuse/overlayfuse/integration/image"
)

// After a restart of the snapshotter daemon (clean stop, then crash), new
// containers start, containers created before it start, and an exited
// container's writes are still there. Also after a restart of containerd.
// Baseline runs (no daemon) restart containerd in its place.
func TestRestart(t *testing.T) {
	e := newEnv(t)
	importCases(t, e)
	const once = "if [ -e /data/p ]; then cat /data/p; else echo persisted > /data/p; echo wrote; fi"
	kept := id("kept")
	t.Cleanup(func() { removeContainer(t, e, kept) })
	if out := mustCtr(t, e, "run", "--snapshotter", snapshotter, image.CasesName, kept, "/bin/sh", "-c", once); out != "wrote\n" {
		t.Fatalf("first run of %s: %q", kept, out)
	}

	for _, step := range []struct {
		name    string
		restart func(*harness.Env) error
	}{
		{"daemon-sigterm", func(e *harness.Env) error { return restartDaemon(e, syscall.SIGTERM) }},
		{"daemon-sigkill", func(e *harness.Env) error { return restartDaemon(e, syscall.SIGKILL) }},
		{"containerd", restartContainerd},
	} {
		// A container created (snapshot active, mounted) before the restart.
		pre := id("pre-" + step.name)
		t.Cleanup(func() { removeContainer(t, e, pre) })
		mustCtr(t, e, "containers", "create", "--snapshotter", snapshotter, image.CasesName, pre, "/bin/sh", "-c", image.CheckScript)

		if err := step.restart(e); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		checkMountsAlive(t, e)

		out := mustCtr(t, e, "run", "--rm", "--snapshotter", snapshotter, image.CasesName, id("new"), "/bin/sh", "-c", image.CheckScript)
		sameLines(t, step.name+": new container", out, image.CasesExpected)
		out = mustCtr(t, e, "tasks", "start", pre)
		sameLines(t, step.name+": container created before", out, image.CasesExpected)
		if out := mustCtr(t, e, "tasks", "start", kept); out != "persisted\n" {
			t.Fatalf("%s: exited container's write lost: %q", step.name, out)
		}
	}
}

func restartDaemon(e *harness.Env, sig syscall.Signal) error {
	if daemonBin == "" {
		return restartContainerd(e)
	}
	if err := e.StopDaemon(sig); err != nil {
		return err
	}
	return e.StartDaemon()
}

func restartContainerd(e *harness.Env) error {
	if err := e.StopContainerd(); err != nil {
		return err
	}
	return e.StartContainerd()
}

// checkMountsAlive fails t if a mount under e.Dir is a dead FUSE mount
// (ENOTCONN), as a crashed daemon leaves them.
func checkMountsAlive(t *testing.T, e *harness.Env) {
	t.Helper()
	for _, m := range mounts(t, e) {
		if _, err := os.ReadDir(m); errors.Is(err, syscall.ENOTCONN) || (err != nil && strings.Contains(err.Error(), "not connected")) {
			t.Errorf("dead mount left after restart: %s: %v", m, err)
		}
	}
}
