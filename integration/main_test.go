// Package integration runs real containerd, runc, ctr and nerdctl over the
// overlayfuse snapshotter. Binaries come from integration/setup.sh.
//
// Environment:
//
//	OVERLAYFUSE_INTEGRATION_BIN  containerd, ctr, shim, nerdctl (default .cache/bin)
//	OVERLAYFUSE_SNAPSHOTTER      overlayfuse (default) or overlayfs, to check
//	                             the tests themselves against the kernel
//	OVERLAYFUSE_DAEMON           a prebuilt containerd-overlay-grpc (default: go build)
//	OVERLAYFUSE_CONTAINERD_CONFIG containerd config (default ../config.toml.example)
package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/overlayfuse/overlayfuse/integration/harness"
	"github.com/overlayfuse/overlayfuse/integration/image"
	"github.com/overlayfuse/overlayfuse/internal/testutil"
)

var (
	binDir      string
	snapshotter string
	daemonBin   string
	configExa   string
	casesTar    string
	setupErr    error // reported by every test: TestMain cannot fail one test
	missingErr  error // binaries not installed: skip, or fail under CI
)

func TestMain(m *testing.M) {
	tmp, err := os.MkdirTemp("", "ofmain-") // not "ofi-": CleanStale must not match it
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	setupErr = setup(tmp)
	code := m.Run()
	os.RemoveAll(tmp)
	os.Exit(code)
}

func setup(tmp string) error {
	binDir = envOr("OVERLAYFUSE_INTEGRATION_BIN", ".cache/bin")
	binDir, _ = filepath.Abs(binDir)
	snapshotter = envOr("OVERLAYFUSE_SNAPSHOTTER", "overlayfuse")
	// The tests run containerd on the stanzas users copy.
	configExa, _ = filepath.Abs(envOr("OVERLAYFUSE_CONTAINERD_CONFIG", "../config.toml.example"))
	if os.Geteuid() != 0 {
		return nil // the tests skip (or fail under CI) on RequireRoot
	}
	if err := harness.CleanStale(); err != nil {
		fmt.Fprintln(os.Stderr, "integration: cleaning up after an earlier run:", err)
	}
	for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2", "nerdctl"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			missingErr = fmt.Errorf("missing %s in %s: run integration/setup.sh first", b, binDir)
			return nil
		}
	}
	if _, err := exec.LookPath("runc"); err != nil {
		missingErr = fmt.Errorf("runc not found: apt-get install runc (or run integration/setup.sh)")
		return nil
	}
	if snapshotter == "overlayfuse" {
		daemonBin = os.Getenv("OVERLAYFUSE_DAEMON")
		if daemonBin == "" {
			daemonBin = filepath.Join(tmp, "containerd-overlay-grpc")
			// Stamped as `make build` does, so the daemon's log says what ran.
			version, err := exec.Command("../hack/version.sh").Output()
			if err != nil {
				return fmt.Errorf("hack/version.sh: %w", err)
			}
			out, err := exec.Command("go", "build", "-ldflags", "-X main.version="+strings.TrimSpace(string(version)),
				"-o", daemonBin, "../cmd/containerd-overlay-grpc").CombinedOutput()
			if err != nil {
				return fmt.Errorf("build containerd-overlay-grpc: %v\n%s", err, out)
			}
		}
	}
	casesTar = filepath.Join(tmp, "cases.tar")
	return writeImage(casesTar, image.CasesName, image.CasesLayers)
}

func writeImage(path, name string, layers func() ([]image.Layer, error)) error {
	ls, err := layers()
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := image.Write(f, name, ls, []string{"/bin/sh"}); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// newEnv starts a private containerd (and daemon) that t.Cleanup tears down,
// also when the test fails.
func newEnv(t *testing.T, daemonArgs ...string) *harness.Env {
	t.Helper()
	return newEnvWith(t, harness.Options{Flags: daemonArgs})
}

// newEnvWith is newEnv with options beyond the binaries and log level; the
// config is the example's and the daemon the one built for the tests
// unless opts names others.
func newEnvWith(t *testing.T, opts harness.Options) *harness.Env {
	t.Helper()
	testutil.RequireRoot(t)
	if snapshotter == "overlayfuse" {
		testutil.RequireFUSE(t)
	}
	if setupErr != nil {
		t.Fatalf("integration setup: %v", setupErr)
	}
	if missingErr != nil {
		if testutil.InCI() {
			t.Fatalf("CI=true, cannot skip: %v", missingErr)
		}
		t.Skip(missingErr)
	}
	if opts.Daemon == "" {
		opts.Daemon = daemonBin
	}
	if opts.ConfigExa == "" {
		opts.ConfigExa = configExa
	}
	opts.BinDir, opts.LogLevel = binDir, "debug"
	e, err := harness.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs of %s:\n%s", e.Dir, e.Logs(60))
		}
		if err := e.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	start := time.Now()
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd (snapshotter %s) up in %v at %s", snapshotter, time.Since(start).Round(time.Millisecond), e.Dir)
	return e
}

// importCases imports the cases image with ctr, unpacked on our snapshotter.
func importCases(t *testing.T, e *harness.Env) {
	t.Helper()
	mustCtr(t, e, "images", "import", "--snapshotter", snapshotter, casesTar)
}

func mustCtr(t *testing.T, e *harness.Env, args ...string) string {
	t.Helper()
	out, err := e.Ctr(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustNerdctl(t *testing.T, e *harness.Env, args ...string) string {
	t.Helper()
	out, err := e.Nerdctl(snapshotter, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var idSeq atomic.Int64

// id returns a unique container name.
func id(prefix string) string { return fmt.Sprintf("%s-%d", prefix, idSeq.Add(1)) }

// sameLines fails t with a line diff unless got equals want.
func sameLines(t *testing.T, what, got, want string) {
	t.Helper()
	if got == want {
		return
	}
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var diff strings.Builder
	for i := 0; i < len(g) || i < len(w); i++ {
		var a, b string
		if i < len(g) {
			a = g[i]
		}
		if i < len(w) {
			b = w[i]
		}
		mark := "  "
		if a != b {
			mark = "!="
		}
		fmt.Fprintf(&diff, "%s got %-45q want %q\n", mark, a, b)
	}
	t.Fatalf("%s: output differs:\n%s", what, diff.String())
}
