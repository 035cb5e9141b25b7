//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
)

func TestBadArgumentsOneLine(t *testing.T) {
	dir := t.TempDir()
	unknownKey := filepath.Join(dir, "unknown.toml")
	writeFile(t, unknownKey, "root = \"/x\"\nlog_level = \"debug\"\n")
	badSyntax := filepath.Join(dir, "bad.toml")
	writeFile(t, badSyntax, "root = \n")
	badValue := filepath.Join(dir, "value.toml")
	writeFile(t, badValue, "consistency = \"loose\"\n")

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "bogus"},
		{[]string{"--passthrough=maybe"}, "passthrough"},
		{[]string{"--consistency", "loose"}, "consistency"},
		{[]string{"--log-level", "loud"}, "log-level"},
		{[]string{"extra"}, "extra"},
		{[]string{"--config", filepath.Join(dir, "missing.toml")}, "missing.toml"},
		{[]string{"--config", unknownKey}, "log_level"},
		{[]string{"--config", badSyntax}, "bad.toml"},
		{[]string{"--config", badValue}, "consistency"},
	} {
		stdout, stderr, code := runDaemon(t, tc.args...)
		if code != 1 || !oneLine(stderr) || !strings.Contains(stderr, tc.want) || stdout != "" {
			t.Errorf("%v: exit %d, stderr %q, stdout %q; want exit 1 and one line about %q", tc.args, code, stderr, stdout, tc.want)
		}
	}
}

func TestVersionAndHelp(t *testing.T) {
	stdout, stderr, code := runDaemon(t, "--version")
	if code != 0 || stdout != "containerd-overlay-grpc v0.0.0-test\n" || stderr != "" {
		t.Errorf("--version: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	stdout, _, code = runDaemon(t, "--help")
	if code != 0 || !strings.Contains(stdout, "-passthrough") || !strings.Contains(stdout, "unmount-all") {
		t.Errorf("--help: exit %d, stdout %q", code, stdout)
	}
}

// A second daemon on the same root must refuse to start; so must one on a
// socket that a live daemon serves.
func TestRefuseSecondInstance(t *testing.T) {
	testutil.RequireFUSE(t)
	dir := shortTempDir(t)
	root, addr := filepath.Join(dir, "root"), filepath.Join(dir, "s.sock")
	d, err := startDaemon(root, addr)
	if err != nil {
		t.Fatal(err)
	}
	cleanupDaemon(t, d)
	if !strings.Contains(d.stderr.String(), "version=v0.0.0-test") {
		t.Errorf("the daemon did not log its version at start:\n%s", d.stderr)
	}

	_, stderr, code := runDaemon(t, "--root", root, "--address", filepath.Join(dir, "other.sock"))
	if code != 1 || !oneLine(stderr) || !strings.Contains(stderr, "in use") {
		t.Errorf("same root: exit %d, stderr %q", code, stderr)
	}
	_, stderr, code = runDaemon(t, "--root", filepath.Join(dir, "root2"), "--address", addr)
	if code != 1 || !oneLine(stderr) || !strings.Contains(stderr, addr+" is in use by a running server") {
		t.Errorf("same address: exit %d, stderr %q", code, stderr)
	}
	assertNotCreated(t, filepath.Join(dir, "root2"))
	if _, err := os.Stat(addr); err != nil {
		t.Errorf("the live daemon's socket was removed: %v", err)
	}
}
