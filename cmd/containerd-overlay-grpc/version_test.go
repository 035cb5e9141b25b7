//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
)

// `make build` stamps the version from hack/version.sh, also where the Go
// toolchain records none (-buildvcs=false: --version said "(devel)").
func TestMakeBuildStampsVersion(t *testing.T) {
	want, err := exec.Command("../../hack/version.sh").Output()
	if err != nil {
		t.Fatalf("hack/version.sh: %v", err)
	}
	version := strings.TrimSpace(string(want))
	if version == "" {
		t.Fatal("hack/version.sh printed nothing")
	}

	bin := t.TempDir()
	build := exec.Command("make", "-C", "../..", "build", "BIN="+bin,
		"GO="+filepath.Join(runtime.GOROOT(), "bin", "go"))
	build.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	out, err := exec.Command(filepath.Join(bin, "containerd-overlay-grpc"), "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(out); got != "containerd-overlay-grpc "+version+"\n" {
		t.Errorf("--version of the make build binary printed %q, want version %q", got, version)
	}
}

// Outside a git checkout (a source tarball) the version comes from the
// VERSION file, and without one it is "dev".
func TestVersionScriptOutsideGit(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "hack"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "hack", "version.sh")
	writeFile(t, script, testutil.ReadFile(t, "../../hack/version.sh"))
	if err := os.Chmod(script, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func() string {
		t.Helper()
		out, err := exec.Command(script).Output()
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	if got := run(); got != "dev\n" {
		t.Errorf("without git or VERSION: %q, want dev", got)
	}
	writeFile(t, filepath.Join(dir, "VERSION"), "v1.2.3\n")
	if got := run(); got != "v1.2.3\n" {
		t.Errorf("with VERSION v1.2.3: %q", got)
	}
}
