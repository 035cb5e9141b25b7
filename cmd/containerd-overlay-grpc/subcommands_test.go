//go:build linux

package main

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
)

func TestSubcommandArguments(t *testing.T) {
	testutil.RequireRoot(t)
	for _, c := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"keeper"}, 2, ""},
		{[]string{"keeper", "--root", "/x", "extra"}, 2, ""},
		{[]string{"unmount-all", "extra"}, 2, ""},
		{[]string{"unmount-all", "--help"}, 0, ""},
		{[]string{"unmount-all", "--root", filepath.Join(t.TempDir(), "never")}, 0, "ended 0 mounts"},
	} {
		stdout, stderr, code := runDaemon(t, c.args...)
		if code != c.code || !strings.Contains(stdout, c.out) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d", c.args, code, stdout, stderr, c.code)
		}
	}
}

// A daemon that cannot have a keeper (here: a root too long for the
// keeper's socket) still serves; its mounts just end with it.
func TestServesWithoutKeeper(t *testing.T) {
	testutil.RequireFUSE(t)
	dir := shortTempDir(t)
	root := filepath.Join(dir, strings.Repeat("r", 100))
	d, err := startDaemon(root, filepath.Join(dir, "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	cleanupDaemon(t, d)
	if !strings.Contains(d.stderr.String(), "no keeper") {
		t.Errorf("no complaint about the missing keeper:\n%s", d.stderr)
	}
	if err := d.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}
