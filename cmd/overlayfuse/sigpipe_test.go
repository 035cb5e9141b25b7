package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
)

// abortFuse aborts the FUSE connection of the mount at mp through
// fusectl, which frees everything waiting on a server that cannot answer.
// The device comes from mountinfo: a stat of mp could hang.
func abortFuse(t *testing.T, mp string) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && unescapeMountinfo(f[4]) == mp {
			minor := f[2][strings.IndexByte(f[2], ':')+1:]
			_ = os.WriteFile("/sys/fs/fuse/connections/"+minor+"/abort", []byte("1"), 0)
		}
	}
}

// runWatched runs a command that uses the mount at mp; if it has not
// ended after a while, the mount's server is taken as hung: its FUSE
// connection is aborted so that nothing stays stuck, and ok is false.
func runWatched(t *testing.T, mp string, name string, args ...string) (out string, ok bool) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var o bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &o
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return o.String(), err == nil
	case <-time.After(30 * time.Second):
		abortFuse(t, mp)
		<-done
		return o.String(), false
	}
}

// procState is the state letter of pid (R, S, D, Z…), "" if it is gone.
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) {
		return string(b[i+2])
	}
	return ""
}

// TestDebugLogIntoClosedPipe: `overlayfuse -f -d … | head -5` — the
// reader of the log goes away while the mount is busy. The server must
// keep serving (its log writes fail), end cleanly on SIGTERM, and leave
// no mount and nothing in D state behind.
func TestDebugLogIntoClosedPipe(t *testing.T) {
	testutil.RequireFUSE(t)
	bin := buildBinary(t)
	f := newFixture(t)
	cleanupMount(t, bin, f.mnt)
	t.Cleanup(func() { abortFuse(t, f.mnt) })
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-f", "-d", "-o", f.opts(), f.mnt)
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			abortFuse(t, f.mnt)
		}
	})
	// head -5
	r := bufio.NewReader(pr)
	for range 5 {
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatalf("log: %v", err)
		}
	}
	pr.Close()

	script := `for i in $(seq 1 100); do cat "$1/top" >/dev/null; touch "$1/n$i"; ls "$1" >/dev/null; done`
	_, activityOK := runWatched(t, f.mnt, "sh", "-c", script, "sh", f.mnt)
	state := procState(cmd.Process.Pid)
	out, readOK := runWatched(t, f.mnt, "cat", filepath.Join(f.mnt, "top"))
	if !activityOK || state == "" || state == "Z" || !readOK || out != "top\n" {
		t.Fatalf("after the log reader went away: activity ok %v, server state %q, read %q ok %v", activityOK, state, out, readOK)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("server state %q 30s after SIGTERM", procState(cmd.Process.Pid))
	}
	if isMounted(t, f.mnt) {
		t.Errorf("still mounted after SIGTERM")
	}
}
