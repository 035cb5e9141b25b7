package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/overlayfuse/overlayfuse/integration/harness"
	"github.com/overlayfuse/overlayfuse/integration/image"
)

// buildTimeout bounds one nerdctl build (the Go toolchain's cold build
// compiles the standard library).
const buildTimeout = 10 * time.Minute

// xtool is a static helper copied into build contexts: busybox can neither
// set nor show xattrs.
//
//	xtool set PATH NAME HEXVALUE   setxattr
//	xtool dump DIR...              every entry below each DIR: type, mode, owner,
//	                               size, content, link target, hard links
//	                               (by first name) and xattrs, no times
const xtoolSource = `package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

func main() {
	switch os.Args[1] {
	case "set":
		v, err := hex.DecodeString(os.Args[4])
		check(err)
		check(syscall.Setxattr(os.Args[2], os.Args[3], v, 0))
	case "dump":
		for _, dir := range os.Args[2:] {
			dump(dir)
		}
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func dump(root string) {
	first := map[uint64]string{}
	check(filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		check(err)
		fi, err := os.Lstat(p)
		check(err)
		st := fi.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%s %v %d:%d", p, fi.Mode(), st.Uid, st.Gid)
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			check(err)
			sum := sha256.Sum256(b)
			line += fmt.Sprintf(" size=%d sha=%x", len(b), sum[:8])
			if st.Nlink > 1 {
				if f, ok := first[st.Ino]; ok {
					line += " link=" + f
				} else {
					first[st.Ino] = p
				}
			}
		case fi.Mode()&os.ModeSymlink != 0:
			l, err := os.Readlink(p)
			check(err)
			line += " -> " + l
		}
		line += xattrs(p)
		fmt.Println(line)
		return nil
	}))
}

func xattrs(p string) string {
	buf := make([]byte, 4096)
	n, err := syscall.Listxattr(p, buf)
	if err != nil || n == 0 {
		return ""
	}
	names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
	sort.Strings(names)
	var out string
	for _, name := range names {
		v := make([]byte, 4096)
		m, err := syscall.Getxattr(p, name, v)
		check(err)
		out += fmt.Sprintf(" %s=%x", name, v[:m])
	}
	return out
}
`

// treeDockerfile's stages change the files of earlier stages' layers in
// every way an overlay must record: overwrite, delete (whiteouts), delete
// and make again (opaque directories), hard links, a setuid bit, a file
// capability and a user xattr; the last stage copies the result of one.
const treeDockerfile = `FROM ` + image.CasesName + ` AS base
COPY xtool /xtool
RUN mkdir -p /b/keep /b/gone/sub /b/opq/sub && echo keep > /b/keep/f && echo gone > /b/gone/sub/f && \
    echo old > /b/opq/sub/old && echo old > /b/over && echo del > /b/delfile && echo src > /b/lsrc && \
    echo suid > /b/suid && echo cap > /b/cap && echo x > /b/xat && rm /data/keep.txt && echo v5 > /data/overwrite.txt

FROM base AS work
RUN echo new > /b/over && rm -r /b/gone && rm /b/delfile && rm -r /b/opq && mkdir -p /b/opq/sub && \
    echo y > /b/opq/sub/y && ln /b/lsrc /b/ldst && ln /b/keep/f /b/keep/f2 && chmod 4755 /b/suid && \
    /xtool set /b/cap security.capability 0100000200040000000000000000000000000000 && \
    /xtool set /b/xat user.comment 6869 && rm -r /data/owned && mkdir /b/new && echo n > /b/new/n
RUN rm /b/keep/f2 && echo again > /b/over2

FROM work
COPY --from=work /b /copied
`

// treeWant lists what the built image must hold, whatever the
// snapshotter: a path and what its dump line must contain.
var treeWant = map[string][]string{
	"/b/over":             {"-rw-r--r-- 0:0 size=4 "},
	"/b/opq/sub/y":        {"size=2 "},
	"/b/ldst":             {"size=4 "},
	"/b/suid":             {"urwxr-xr-x 0:0"},
	"/b/cap":              {"size=4 ", " security.capability=0100000200040000000000000000000000000000"},
	"/b/new/n":            {"size=2 "},
	"/b/over2":            {"size=6 "},
	"/copied/ldst":        {"size=4 "},
	"/copied/suid":        {"urwxr-xr-x 0:0"},
	"/copied/cap":         {" security.capability=0100000200040000000000000000000000000000"},
	"/data/overwrite.txt": {"size=3 "},
}

// treeGone lists what the built image must not hold.
var treeGone = []string{"/b/gone", "/b/delfile", "/b/opq/sub/old", "/b/keep/f2", "/data/owned", "/data/keep.txt", "/copied/gone"}

// buildContext writes a build context with the Dockerfile and xtool.
func buildContext(t *testing.T, dockerfile string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(t.TempDir(), "xtool.go")
	if err := os.WriteFile(src, []byte(xtoolSource), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "xtool"), src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build xtool: %v\n%s", err, out)
	}
	files["Dockerfile"] = dockerfile
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// nerdctlBuild builds dir as tag with nerdctl build on buildkitd host,
// from local images only (no registry is reachable), and returns the
// plain progress output.
func nerdctlBuild(t *testing.T, e *harness.Env, sn, host, dir, tag string) string {
	t.Helper()
	start := time.Now()
	out, err := e.NerdctlBuild(buildTimeout, sn, host, "--pull=false", "--progress=plain", "-t", tag, dir)
	if err != nil {
		t.Fatalf("nerdctl build on %s: %v", sn, err)
	}
	t.Logf("nerdctl build %s on %s: %v", tag, sn, time.Since(start).Round(time.Millisecond))
	return out
}

// TestBuildTree builds a multi-stage Dockerfile with BuildKit on our
// snapshotter and on containerd's overlayfs in the same containerd, and
// checks that both images run and hold the same tree, the expected one.
func TestBuildTree(t *testing.T) {
	e := newEnv(t)
	dir := buildContext(t, treeDockerfile, map[string]string{})
	trees := map[string]string{}
	for _, sn := range []string{snapshotter, "overlayfs"} {
		if _, ok := trees[sn]; ok {
			continue // OVERLAYFUSE_SNAPSHOTTER=overlayfs: one build
		}
		host, err := e.StartBuildkitd(sn)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Nerdctl(sn, "load", "-i", casesTar); err != nil {
			t.Fatal(err)
		}
		tag := "docker.io/overlayfuse/built-" + sn + ":latest"
		nerdctlBuild(t, e, sn, host, dir, tag)
		out, err := e.Nerdctl(sn, "run", "--rm", "--net", "none", tag, "/xtool", "dump", "/b", "/copied", "/data")
		if err != nil {
			t.Fatal(err)
		}
		// A leading newline: every line matches as "\n" + its path.
		trees[sn] = "\n" + out
	}
	got := trees[snapshotter]
	for p, want := range treeWant {
		line := regexp.MustCompile(`\n` + regexp.QuoteMeta(p) + ` [^\n]*`).FindString(got)
		for _, w := range want {
			if !strings.Contains(line, w) {
				t.Errorf("image built on %s: %s is %q, want %q in it", snapshotter, p, line, w)
			}
		}
	}
	for _, g := range treeGone {
		if strings.Contains(got, "\n"+g+" ") || strings.Contains(got, "\n"+g+"/") {
			t.Errorf("image built on %s still holds %s", snapshotter, g)
		}
	}
	if !regexp.MustCompile(`\n/b/ldst [^\n]* link=/b/lsrc|\n/b/lsrc [^\n]* link=/b/ldst`).MatchString(got) {
		t.Errorf("/b/lsrc and /b/ldst are not one file:\n%s", got)
	}
	// The one known difference: on overlayfs, BuildKit computes layers with
	// its own overlay differ, which drops an unchanged lower file from the
	// layer even when a new name was linked to it, so the image has two
	// files there; containerd's walking differ and ours keep the link.
	unlink := regexp.MustCompile(`(\n/b/l(?:src|dst) [^\n]*) link=/b/l(?:src|dst)`)
	sameLines(t, "tree built on "+snapshotter+" vs overlayfs",
		unlink.ReplaceAllString(got, "$1"), unlink.ReplaceAllString(trees["overlayfs"], "$1"))
	if snapshotter == "overlayfuse" {
		if log := daemonLog(t, e); !strings.Contains(log, "diff created from upper dir") {
			t.Error("BuildKit's layers did not come from our differ")
		}
	}
}

// TestBuildGo is a CI build: a Go toolchain image made from the host's
// GOROOT, and a Dockerfile that copies a small module in, builds and tests
// it. The result runs; building it again reuses every step.
func TestBuildGo(t *testing.T) {
	e := newEnv(t)
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		t.Fatalf("go env GOROOT: %v", err)
	}
	goTar := filepath.Join(t.TempDir(), "go.tar")
	if err := writeImage(goTar, image.GoName, func() ([]image.Layer, error) {
		return image.GoLayers(strings.TrimSpace(string(goroot)))
	}); err != nil {
		t.Fatal(err)
	}
	mustNerdctl(t, e, "load", "-i", goTar)
	host, err := e.StartBuildkitd(snapshotter)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, data := range image.GoModule {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(image.GoDockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	const tag = "docker.io/overlayfuse/hello:latest"
	out := nerdctlBuild(t, e, snapshotter, host, dir, tag)
	if len(uncachedSteps(out)) < 2 {
		t.Errorf("first build: COPY and RUN did not run:\n%s", out)
	}
	if !strings.Contains(out, "ok  \texample.com/hello") {
		t.Errorf("go test did not pass in the build:\n%s", out)
	}
	sameLines(t, "built program", mustNerdctl(t, e, "run", "--rm", "--net", "none", tag), "hello, overlayfuse\n")

	out = nerdctlBuild(t, e, snapshotter, host, dir, tag)
	if steps := uncachedSteps(out); len(steps) > 0 {
		t.Errorf("second build ran %q again:\n%s", steps, out)
	}
}

// uncachedSteps returns the Dockerfile steps (COPY, RUN) of BuildKit's
// plain progress output that did not come from the cache.
func uncachedSteps(progress string) []string {
	titles := map[string]string{}
	cached := map[string]bool{}
	var order []string
	step := regexp.MustCompile(`^(#\d+) \[[^]]+\] ((?:RUN|COPY) .*)$`)
	for _, l := range strings.Split(progress, "\n") {
		if m := step.FindStringSubmatch(l); m != nil {
			if _, ok := titles[m[1]]; !ok {
				order = append(order, m[1])
			}
			titles[m[1]] = m[2]
		}
		if id, ok := strings.CutSuffix(l, " CACHED"); ok {
			cached[id] = true
		}
	}
	var out []string
	for _, id := range order {
		if !cached[id] {
			out = append(out, titles[id])
		}
	}
	if len(order) == 0 {
		out = append(out, "no COPY or RUN step in the output")
	}
	return out
}
