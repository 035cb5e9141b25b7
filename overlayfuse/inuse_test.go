package overlayfuse

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
)

// TestUpperWorkInUse: a second mount of an upper and work dir that a live
// mount uses is refused, in this process and from another one, with a
// clear error, and leaves the live mount and its work dir alone; once the
// first mount is gone, mounting again works.
func TestUpperWorkInUse(t *testing.T) {
	lowers, upper, work := newLayers(t, 1)
	writeFile(t, filepath.Join(lowers[0], "f"), "lower", 0o644)
	layers := Layers{Lower: lowers, Upper: upper, Work: work}
	m := mountLayers(t, lowers, upper, work, Options{})
	// Something a live mount keeps in its work dir.
	keep := filepath.Join(work, workSubdir, "live")
	must(t, os.WriteFile(keep, nil, 0o600))

	dir2 := filepath.Join(t.TempDir(), "second")
	must(t, os.Mkdir(dir2, 0o755))
	srv, err := Mount(dir2, layers, Options{})
	if err == nil {
		t.Cleanup(func() { _ = srv.Unmount() })
		t.Fatal("a second mount of the same upper and work dir in this process succeeded")
	}
	if !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), upper) {
		t.Errorf("second mount in this process: %v, want EBUSY naming %s", err, upper)
	}

	// Another process: the test binary as a server (TestMain).
	spec, err := json.Marshal(serveSpec{Dir: dir2, Layers: layers})
	must(t, err)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), serveEnv+"="+string(spec))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.HasPrefix(line, "ready") {
		_ = cmd.Process.Signal(unix.SIGTERM)
		_ = cmd.Wait()
		_ = unix.Unmount(dir2, unix.MNT_DETACH)
		t.Fatal("a second mount of the same upper and work dir from another process succeeded")
	}
	if err := cmd.Wait(); err == nil {
		t.Errorf("the other process exited 0")
	}
	if msg := stderr.String(); !strings.Contains(msg, "in use") || !strings.Contains(msg, upper) {
		t.Errorf("the other process said %q, want a word that %s is in use", msg, upper)
	}

	if _, err := os.Stat(keep); err != nil {
		t.Errorf("the refused mounts emptied the live mount's work dir: %v", err)
	}
	must(t, os.WriteFile(m.path("f"), []byte("upper"), 0o644))
	if got := testutil.ReadFile(t, m.path("f")); got != "upper" {
		t.Errorf("first mount after the refusals: %q", got)
	}

	m.unmount(t)
	m2 := mountLayers(t, lowers, upper, work, Options{})
	if got := testutil.ReadFile(t, m2.path("f")); got != "upper" {
		t.Errorf("mount after the first unmounted: %q", got)
	}
}
