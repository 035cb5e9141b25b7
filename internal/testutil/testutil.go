// Package testutil holds the checks shared by tests that need root and
// /dev/fuse. Under CI=true a missing prerequisite fails the test instead of
// skipping it, so a green CI run always means the FUSE tests ran.
package testutil

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// skipOrFail skips the test, or fails it under CI.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=true, cannot skip: "+format, args...)
	}
	t.Skipf(format, args...)
}

// RequireRoot stops the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root")
	}
}

// RequireFUSE stops the test unless it runs as root with a usable /dev/fuse.
func RequireFUSE(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	if err := unix.Access("/dev/fuse", unix.R_OK|unix.W_OK); err != nil {
		skipOrFail(t, "needs /dev/fuse: %v", err)
	}
}

// RequireKernelOverlay stops the test unless kernel overlayfs can be mounted.
func RequireKernelOverlay(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	if _, err := exec.LookPath("mount"); err != nil {
		skipOrFail(t, "needs mount(8): %v", err)
	}
	b, err := os.ReadFile("/proc/filesystems")
	if err != nil || !containsWord(string(b), "overlay") {
		// Loading the module mounts nothing; a failed mount below says why.
		_ = exec.Command("modprobe", "overlay").Run()
	}
}

func containsWord(s, w string) bool {
	for i := 0; i+len(w) <= len(s); i++ {
		if s[i:i+len(w)] == w && (i+len(w) == len(s) || s[i+len(w)] == '\n') && (i == 0 || s[i-1] == '\t') {
			return true
		}
	}
	return false
}

// ProcKiB reads a "Field: N kB" line of a /proc file, such as VmRSS of
// /proc/PID/status, in KiB.
func ProcKiB(t testing.TB, file, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s %s: %v", file, field, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in %s", field, file)
	return 0
}

// CachedPages is how many pages of [off, off+length) of the open file fd
// are in its own page cache (cachestat(2), Linux 6.5+; length 0 means to
// the end of the file). It counts the cache of that one file, whatever
// else the machine does.
func CachedPages(fd int, off, length int64) (int64, error) {
	rng := struct{ Off, Len uint64 }{uint64(off), uint64(length)}
	var cs struct {
		Cache, Dirty, Writeback, Evicted, RecentlyEvicted uint64
	}
	_, _, e := unix.Syscall6(unix.SYS_CACHESTAT, uintptr(fd), uintptr(unsafe.Pointer(&rng)), uintptr(unsafe.Pointer(&cs)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int64(cs.Cache), nil
}

// ReadFile returns the content of path, failing the test if it cannot.
func ReadFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
