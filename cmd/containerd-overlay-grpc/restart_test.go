//go:build linux

package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"github.com/overlayfuse/overlayfuse/internal/testutil/mounttest"
)

// TestRestartAfterKill kills the daemon with SIGKILL while a snapshot is
// active, starts it again, and uses the snapshot: its mount is found dead,
// detached, and mounted again with the data written before the crash.
func TestRestartAfterKill(t *testing.T) {
	testutil.RequireFUSE(t)
	ctx := context.Background()
	dir := shortTempDir(t)
	root, addr := filepath.Join(dir, "root"), filepath.Join(dir, "s.sock")

	d1, err := startDaemon(root, addr)
	if err != nil {
		t.Fatal(err)
	}
	cleanupDaemon(t, d1)
	sn, closeConn, err := dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()

	base, err := sn.Prepare(ctx, "base-active", "")
	if err != nil {
		t.Fatal(err)
	}
	target := mounttest.MountAt(t, base)
	writeFile(t, filepath.Join(target, "lower"), "from the lower layer")
	mounttest.Detach(t, target)
	if err := sn.Commit(ctx, "base", "base-active"); err != nil {
		t.Fatal(err)
	}
	m, err := sn.Prepare(ctx, "active", "base")
	if err != nil {
		t.Fatal(err)
	}
	target = mounttest.MountAt(t, m)
	writeFile(t, filepath.Join(target, "upper"), "written before the crash")
	mounttest.Detach(t, target)

	d1.kill()
	// The mount outlives its server: a request made now waits for the
	// next daemon, which takes the mount over.
	statfs := make(chan error, 1)
	go func() {
		var st unix.Statfs_t
		statfs <- unix.Statfs(m[0].Source, &st)
	}()

	d2, err := startDaemon(root, addr) // also replaces the stale socket
	if err != nil {
		t.Fatal(err)
	}
	cleanupDaemon(t, d2)
	if err := <-statfs; err != nil {
		t.Errorf("statfs of the mount across the restart: %v", err)
	}
	if log := d2.stderr.String(); !strings.Contains(log, "resumed") && !strings.Contains(log, "took over") {
		t.Logf("second daemon's log:\n%s", log)
	}
	sn2, closeConn2, err := dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn2()
	m2, err := sn2.Mounts(ctx, "active")
	if err != nil {
		t.Fatal(err)
	}
	target = mounttest.MountAt(t, m2)
	if got := testutil.ReadFile(t, filepath.Join(target, "upper")); got != "written before the crash" {
		t.Errorf("upper after restart: %q", got)
	}
	if got := testutil.ReadFile(t, filepath.Join(target, "lower")); got != "from the lower layer" {
		t.Errorf("lower after restart: %q", got)
	}
	writeFile(t, filepath.Join(target, "after"), "written after the restart")
	mounttest.Detach(t, target)
	if err := sn2.Commit(ctx, "top", "active"); err != nil {
		t.Fatal(err)
	}

	// SIGINT hands the mounts over to the next daemon; unmount-all ends
	// them.
	if err := d2.stop(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runDaemon(t, "unmount-all", "--root", root); code != 0 {
		t.Fatalf("unmount-all: exit %d, %q", code, stderr)
	}
	mounttest.AssertNoMounts(t, root)
	if _, err := os.Stat(addr); !os.IsNotExist(err) {
		t.Errorf("socket left after shutdown: %v", err)
	}
}

// TestShutdownThenUnmountAll stops the daemon with active snapshots, which
// leaves them to the next daemon; unmount-all, refused while the daemon
// runs, then ends every mount and leaves no keeper process.
func TestShutdownThenUnmountAll(t *testing.T) {
	testutil.RequireFUSE(t)
	ctx := context.Background()
	dir := shortTempDir(t)
	root, addr := filepath.Join(dir, "root"), filepath.Join(dir, "sub", "s.sock")
	d, err := startDaemon(root, addr, "--passthrough", "off", "--consistency", "strict")
	if err != nil {
		t.Fatal(err)
	}
	cleanupDaemon(t, d)
	if log := d.stderr.String(); !strings.Contains(log, "FUSE overlay works") || !strings.Contains(log, "passthrough=false") || !strings.Contains(log, "consistency=strict") {
		t.Errorf("the startup probe did not log the options in use:\n%s", log)
	}
	if st, err := os.Stat(filepath.Dir(addr)); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("socket directory: %v %v, want mode 0700", st.Mode(), err)
	}
	sn, closeConn, err := dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	if _, err := sn.Prepare(ctx, "b", ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "base", "b"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"x", "y", "z"} {
		if _, err := sn.Prepare(ctx, k, "base"); err != nil {
			t.Fatal(err)
		}
	}
	if _, stderr, code := runDaemon(t, "unmount-all", "--root", root); code != 1 || !strings.Contains(stderr, "in use") {
		t.Errorf("unmount-all with the daemon running: exit %d, %q", code, stderr)
	}
	if err := d.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runDaemon(t, "unmount-all", "--root", root)
	if code != 0 {
		t.Fatalf("unmount-all: exit %d, %q", code, stderr)
	}
	t.Logf("unmount-all: %s", stdout)
	mounttest.AssertNoMounts(t, root)
	if _, err := os.Stat(filepath.Join(root, "keeper.sock")); !os.IsNotExist(err) {
		t.Errorf("keeper still listening after unmount-all: %v", err)
	}
}
