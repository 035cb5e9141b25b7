package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
)

// These tests run the built command as a user would.

// buildBinary builds the command into a temp dir and returns its path.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "overlayfuse")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runBin runs the command to completion, with a deadline so a server that
// kept our stdout/stderr open fails the test instead of hanging it.
func runBin(t *testing.T, dir, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %q did not return: %v", bin, args, ctx.Err())
	}
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		t.Fatalf("%s %q: %v", bin, args, err)
	}
	return o.String(), e.String(), code
}

// isMounted reports whether mp is a mount point, from mountinfo.
func isMounted(t *testing.T, mp string) bool {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == mp {
			return true
		}
	}
	return false
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for space…).
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cleanupMount unmounts mp at the end of the test, lazily if it is busy,
// and kills any server left behind.
func cleanupMount(t *testing.T, bin, mp string) {
	t.Cleanup(func() {
		for i := 0; i < 10 && isMounted(t, mp); i++ {
			if err := syscall.Unmount(mp, 0); err != nil {
				_ = syscall.Unmount(mp, syscall.MNT_DETACH)
			}
		}
		for _, pid := range serverPIDs(t, bin) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// serverPIDs lists live processes running bin.
func serverPIDs(t *testing.T, bin string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || exe != bin {
			continue
		}
		// A zombie has ended; its parent just has not reaped it yet.
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err == nil {
			if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
				continue
			}
		}
		pids = append(pids, pid)
	}
	return pids
}

// waitFor polls cond for up to 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// fixture is a layer layout with a file in each lower layer.
type fixture struct {
	dir, l1, l2, upper, work, mnt string
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	d := layout(t)
	f := fixture{dir: d, l1: d + "/l1", l2: d + "/l2", upper: d + "/u", work: d + "/w", mnt: d + "/m"}
	for p, s := range map[string]string{f.l1 + "/top": "top\n", f.l2 + "/bottom": "bottom\n", f.l2 + "/top": "hidden\n"} {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f fixture) opts() string {
	return "lowerdir=" + f.l1 + ":" + f.l2 + ",upperdir=" + f.upper + ",workdir=" + f.work
}

func TestCommandErrors(t *testing.T) {
	bin := buildBinary(t)
	f := newFixture(t)
	cleanupMount(t, bin, f.mnt)
	shm := t.TempDir()
	if testutil.InCI() || os.Geteuid() == 0 {
		testutil.RequireRoot(t)
		// A tmpfs gives a workdir on another filesystem than the upper.
		if err := syscall.Mount("tmpfs", shm, "tmpfs", 0, ""); err != nil {
			t.Fatalf("mount tmpfs: %v", err)
		}
		t.Cleanup(func() { _ = syscall.Unmount(shm, syscall.MNT_DETACH) })
	} else {
		shm = "/proc"
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown option", []string{"-o", f.opts() + ",bogus=1", f.mnt}, `overlayfuse: unknown option "bogus=1"`},
		{"unknown flag", []string{"-q", "-o", f.opts(), f.mnt}, `overlayfuse: unknown flag "-q" (see --help)`},
		{"missing lowerdir option", []string{"-o", "upperdir=" + f.upper + ",workdir=" + f.work, f.mnt}, "overlayfuse: missing lowerdir= option"},
		{"missing lower", []string{"-o", "lowerdir=" + f.l1 + ":" + f.dir + "/nope", f.mnt}, "overlayfuse: lowerdir " + f.dir + "/nope: no such file or directory"},
		{"missing upper", []string{"-o", "lowerdir=" + f.l1 + ",upperdir=" + f.dir + "/nope,workdir=" + f.work, f.mnt}, "overlayfuse: upperdir " + f.dir + "/nope: no such file or directory"},
		{"workdir on other fs", []string{"-o", "lowerdir=" + f.l1 + ",upperdir=" + f.upper + ",workdir=" + shm, f.mnt}, "overlayfuse: workdir " + shm + " and upperdir " + f.upper + " must be on the same filesystem"},
		{"missing mountpoint", []string{"-o", f.opts(), f.dir + "/nope"}, "overlayfuse: mountpoint " + f.dir + "/nope: no such file or directory"},
		{"no mountpoint", []string{"-o", f.opts()}, "overlayfuse: no mountpoint given (see --help)"},
		{"bad passthrough", []string{"-f", "-o", f.opts() + ",passthrough=maybe", f.mnt}, "overlayfuse: passthrough=\"maybe\": want auto, on or off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runBin(t, f.dir, bin, tc.args...)
			if code != 1 {
				t.Errorf("exit status %d, want 1", code)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
			if stderr != tc.want+"\n" {
				t.Errorf("stderr %q, want the one line %q", stderr, tc.want)
			}
			if isMounted(t, f.mnt) || isMounted(t, f.dir+"/nope") {
				t.Errorf("something was mounted")
			}
		})
	}
}

func TestHelpVersion(t *testing.T) {
	bin := buildBinary(t)
	out, stderr, code := runBin(t, "/", bin, "--help")
	if code != 0 || !strings.Contains(out, "usage: overlayfuse") || stderr != "" {
		t.Errorf("--help: %d %q %q", code, out, stderr)
	}
	out, stderr, code = runBin(t, "/", bin, "--version")
	if code != 0 || !strings.HasPrefix(out, "overlayfuse: version ") || stderr != "" {
		t.Errorf("--version: %d %q %q", code, out, stderr)
	}
}

// checkOverlay reads through the mount: the top layer wins, the bottom one
// shows through.
func checkOverlay(t *testing.T, mnt string) {
	t.Helper()
	for name, want := range map[string]string{"top": "top\n", "bottom": "bottom\n"} {
		b, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil || string(b) != want {
			t.Errorf("read %s: %q, %v; want %q", name, b, err, want)
		}
	}
}

// TestBackgroundReadyAndUmount: the command returns once the mount
// answers, and umount(8) ends the server process.
func TestBackgroundReadyAndUmount(t *testing.T) {
	testutil.RequireFUSE(t)
	bin := buildBinary(t)
	f := newFixture(t)
	cleanupMount(t, bin, f.mnt)

	// Relative paths: the server changes to / but must keep the layers.
	_, stderr, code := runBin(t, f.dir, bin, "-o", "lowerdir=l1:l2,upperdir=u,workdir=w", "m")
	if code != 0 {
		t.Fatalf("exit status %d: %s", code, stderr)
	}
	// No retry: the mount must be ready when the command has returned.
	if _, err := os.Stat(filepath.Join(f.mnt, "bottom")); err != nil {
		t.Fatalf("stat right after mount: %v", err)
	}
	checkOverlay(t, f.mnt)
	if err := os.WriteFile(filepath.Join(f.mnt, "new"), []byte("x"), 0o644); err != nil {
		t.Errorf("write: %v", err)
	}
	if _, err := os.Stat(filepath.Join(f.upper, "new")); err != nil {
		t.Errorf("new file not in upperdir: %v", err)
	}
	pids := serverPIDs(t, bin)
	if len(pids) != 1 {
		t.Fatalf("want one server process, got %v", pids)
	}
	checkFileLimit(t, pids[0])
	if out, err := exec.Command("umount", f.mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	waitFor(t, "the server to exit after umount", func() bool { return len(serverPIDs(t, bin)) == 0 })
	if isMounted(t, f.mnt) {
		t.Errorf("still mounted")
	}
}

// TestBackgroundSIGTERM: the background server unmounts on SIGTERM.
func TestBackgroundSIGTERM(t *testing.T) {
	testutil.RequireFUSE(t)
	bin := buildBinary(t)
	f := newFixture(t)
	cleanupMount(t, bin, f.mnt)
	if _, stderr, code := runBin(t, f.dir, bin, "-o", f.opts(), f.mnt); code != 0 {
		t.Fatalf("exit status %d: %s", code, stderr)
	}
	pids := serverPIDs(t, bin)
	if len(pids) != 1 {
		t.Fatalf("want one server process, got %v", pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the server to exit after SIGTERM", func() bool { return len(serverPIDs(t, bin)) == 0 })
	if isMounted(t, f.mnt) {
		t.Errorf("still mounted after SIGTERM")
	}
}

// TestForegroundSignals: SIGTERM, SIGINT and SIGHUP unmount, exit 0.
func TestForegroundSignals(t *testing.T) {
	testutil.RequireFUSE(t)
	bin := buildBinary(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			f := newFixture(t)
			cleanupMount(t, bin, f.mnt)
			var stderr bytes.Buffer
			cmd := exec.Command(bin, "-f", "-o", f.opts(), f.mnt)
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
			})
			waitFor(t, "the mount", func() bool { return isMounted(t, f.mnt) })
			checkOverlay(t, f.mnt)
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				exited <- err // for the cleanup
				if err != nil {
					t.Errorf("exit after %v: %v; stderr:\n%s", sig, err, stderr.String())
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("no exit 10s after %v", sig)
			}
			if isMounted(t, f.mnt) {
				t.Errorf("still mounted after %v", sig)
			}
		})
	}
}

// TestMountHelper mounts the way mount(8) does for fuse.overlayfuse:
// mount.fuse3 runs `overlayfuse SOURCE MOUNTPOINT -o OPTS` from PATH.
func TestMountHelper(t *testing.T) {
	testutil.RequireFUSE(t)
	helper, err := exec.LookPath("mount.fuse3")
	if err != nil {
		helper = "/sbin/mount.fuse3"
		if _, err := os.Stat(helper); err != nil {
			if testutil.InCI() {
				t.Fatalf("CI=true, cannot skip: needs mount.fuse3 (apt-get install fuse3)")
			}
			t.Skip("needs mount.fuse3 (apt-get install fuse3)")
		}
	}
	bin := buildBinary(t)
	binDir := filepath.Dir(bin)

	t.Run("mount.fuse3 with PATH", func(t *testing.T) {
		f := newFixture(t)
		cleanupMount(t, bin, f.mnt)
		cmd := exec.Command(helper, "overlayfuse", f.mnt, "-t", "fuse.overlayfuse",
			"-o", "rw,nodev,noatime,"+f.opts())
		cmd.Env = append(os.Environ(), "PATH="+binDir+":"+os.Getenv("PATH"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
		checkOverlay(t, f.mnt)
		if out, err := exec.Command("umount", f.mnt).CombinedOutput(); err != nil {
			t.Fatalf("umount: %v\n%s", err, out)
		}
		waitFor(t, "the server to exit", func() bool { return len(serverPIDs(t, bin)) == 0 })
	})

	// mount(8) runs helpers with a fixed PATH, so a binary outside the
	// system directories is named with the "prog#source" form.
	t.Run("mount -t fuse", func(t *testing.T) {
		f := newFixture(t)
		cleanupMount(t, bin, f.mnt)
		out, err := exec.Command("mount", "-t", "fuse", bin+"#overlayfuse", f.mnt, "-o", f.opts()).CombinedOutput()
		if err != nil {
			t.Fatalf("mount: %v\n%s", err, out)
		}
		checkOverlay(t, f.mnt)
		if out, err := exec.Command("umount", f.mnt).CombinedOutput(); err != nil {
			t.Fatalf("umount: %v\n%s", err, out)
		}
		waitFor(t, "the server to exit", func() bool { return len(serverPIDs(t, bin)) == 0 })
	})

	t.Run("mount -t fuse with a bad option", func(t *testing.T) {
		f := newFixture(t)
		cleanupMount(t, bin, f.mnt)
		out, err := exec.Command("mount", "-t", "fuse", bin+"#overlayfuse", f.mnt, "-o", f.opts()+",bogus").CombinedOutput()
		if err == nil {
			t.Fatalf("mount with a bad option succeeded")
		}
		if !strings.Contains(string(out), `overlayfuse: unknown option "bogus"`) {
			t.Errorf("output %q lacks the error line", out)
		}
		if isMounted(t, f.mnt) {
			t.Errorf("mounted despite the error")
		}
	})
}

// TestBackgroundMountErrorRelayed: when Mount fails in the background
// server, the command prints the server's error line and exits 1.
func TestBackgroundMountErrorRelayed(t *testing.T) {
	testutil.RequireFUSE(t)
	bin := buildBinary(t)
	f := newFixture(t)
	cleanupMount(t, bin, f.mnt)
	// An immutable workdir passes the command's checks, but the server
	// cannot create its scratch directory in it, even as root.
	if err := setImmutable(f.work, true); err != nil {
		t.Skipf("cannot make the workdir immutable here: %v", err)
	}
	t.Cleanup(func() { _ = setImmutable(f.work, false) })

	stdout, stderr, code := runBin(t, f.dir, bin, "-o", f.opts(), f.mnt)
	if code != 1 || stdout != "" {
		t.Errorf("exit status %d, stdout %q; want 1 and nothing", code, stdout)
	}
	if !strings.HasPrefix(stderr, "overlayfuse: ") || strings.Count(stderr, "\n") != 1 ||
		!strings.Contains(stderr, "operation not permitted") {
		t.Errorf("stderr %q, want one line with the server's error", stderr)
	}
	if isMounted(t, f.mnt) {
		t.Errorf("mounted despite the error")
	}
	waitFor(t, "the failed server to exit", func() bool { return len(serverPIDs(t, bin)) == 0 })
}

// fsImmutableFL is FS_IMMUTABLE_FL from linux/fs.h (x/sys lacks it).
const fsImmutableFL = 0x10

// setImmutable sets or clears chattr's +i flag on dir.
func setImmutable(dir string, on bool) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return err
	}
	if on {
		flags |= fsImmutableFL
	} else {
		flags &^= fsImmutableFL
	}
	return unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags))
}

// checkFileLimit: the server may keep an open file per node of a big
// tree, so it raises RLIMIT_NOFILE: to fs.nr_open with CAP_SYS_RESOURCE,
// else the soft limit to the hard one.
func checkFileLimit(t *testing.T, pid int) {
	t.Helper()
	var own unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &own); err != nil {
		t.Fatal(err)
	}
	limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(limits), "\n") {
		rest, ok := strings.CutPrefix(line, "Max open files")
		if f := strings.Fields(rest); ok && len(f) >= 2 {
			soft, _ := strconv.ParseUint(f[0], 10, 64)
			hard, _ := strconv.ParseUint(f[1], 10, 64)
			if soft != hard || hard < own.Max {
				t.Errorf("server open file limits %d/%d, want soft = hard >= %d", soft, hard, own.Max)
			}
			return
		}
	}
	t.Errorf("no open file limit in /proc/%d/limits", pid)
}
