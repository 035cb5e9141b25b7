//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
)

// A start refused for a bad address or config value exits with one line
// that says what is wrong, and creates nothing: no root, so no lock, no
// metadata.db, no snapshots/.
func TestRefusedStartLeavesNothing(t *testing.T) {
	dir := shortTempDir(t)
	root := filepath.Join(dir, "root")

	notSocket := filepath.Join(dir, "file")
	writeFile(t, notSocket, "not a socket\n")
	long := filepath.Join(dir, strings.Repeat("a", 120)+".sock")
	badValue := filepath.Join(dir, "value.toml")
	writeFile(t, badValue, fmt.Sprintf("root = %q\npassthrough = \"maybe\"\n", root))
	badType := filepath.Join(dir, "type.toml")
	writeFile(t, badType, fmt.Sprintf("root = %q\nconsistency = 1\n", root))
	badAddress := filepath.Join(dir, "address.toml")
	writeFile(t, badAddress, fmt.Sprintf("root = %q\naddress = %q\n", root, long))

	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"not a socket", []string{"--root", root, "--address", notSocket},
			[]string{notSocket, "exists and is not a socket"}},
		{"socket path too long", []string{"--root", root, "--address", long},
			[]string{"address", fmt.Sprintf("%d bytes long", len(long)), "at most 107"}},
		{"bad value in config", []string{"--config", badValue},
			[]string{"config " + badValue + ": key passthrough \"maybe\": want auto, on or off"}},
		{"bad type in config", []string{"--config", badType},
			[]string{"config " + badType + ":2:", "key consistency"}},
		{"socket path too long in config", []string{"--config", badAddress},
			[]string{"config " + badAddress + ": key address", "at most 107"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runDaemon(t, tc.args...)
			if code != 1 || !oneLine(stderr) || stdout != "" {
				t.Errorf("exit %d, stderr %q, stdout %q; want exit 1 and one line", code, stderr, stdout)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q does not say %q", stderr, w)
				}
			}
			assertNotCreated(t, root)
		})
	}
	if got := testutil.ReadFile(t, notSocket); got != "not a socket\n" {
		t.Errorf("the file at the address was changed: %q", got)
	}
}

// assertNotCreated fails if root exists: a refused start must not make it.
func assertNotCreated(t testing.TB, root string) {
	t.Helper()
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	t.Errorf("refused start left root %s behind (err %v), holding %v", root, err, names)
}

// The limit validate enforces is the one bind(2) has: a path of
// maxSocketPath bytes binds, one byte more does not.
func TestSocketPathLimit(t *testing.T) {
	dir := shortTempDir(t)
	path := func(n int) string {
		return filepath.Join(dir, strings.Repeat("s", n-len(dir)-1))
	}
	c := defaultConfig()
	c.Address = path(maxSocketPath)
	if err := c.validate(); err != nil {
		t.Errorf("%d bytes: %v", len(c.Address), err)
	}
	l, err := net.Listen("unix", c.Address)
	if err != nil {
		t.Fatalf("listen on %d bytes: %v", len(c.Address), err)
	}
	l.Close()

	c.Address = path(maxSocketPath + 1)
	if err := c.validate(); err == nil {
		t.Errorf("%d bytes accepted", len(c.Address))
	}
	if l, err := net.Listen("unix", c.Address); err == nil {
		l.Close()
		t.Errorf("listen on %d bytes worked: the limit is wrong", len(c.Address))
	}
}
