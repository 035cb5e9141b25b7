package overlayfuse

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/overlayfuse/overlayfuse/internal/procsetup"
	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"golang.org/x/sys/unix"
)

// testMount is one overlay mounted for a test.
type testMount struct {
	dir    string // merged view
	upper  string
	work   string
	lowers []string
	srv    *Server
}

// newLayers makes n empty lower dirs plus upper and work under a temp dir.
func newLayers(t *testing.T, n int) (lowers []string, upper, work string) {
	t.Helper()
	base := t.TempDir()
	for i := 0; i < n; i++ {
		l := filepath.Join(base, "lower"+itoa(i))
		must(t, os.Mkdir(l, 0o755))
		lowers = append(lowers, l)
	}
	upper, work = filepath.Join(base, "upper"), filepath.Join(base, "work")
	must(t, os.Mkdir(upper, 0o755))
	must(t, os.Mkdir(work, 0o755))
	return lowers, upper, work
}

// mountLayers mounts the overlay and unmounts it when the test ends.
func mountLayers(t *testing.T, lowers []string, upper, work string, opts Options) *testMount {
	t.Helper()
	testutil.RequireFUSE(t)
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "merged")
	must(t, os.Mkdir(dir, 0o755))
	// Let tests acting as other users reach the mount.
	must(t, os.Chmod(tmp, 0o755))
	must(t, os.Chmod(filepath.Dir(tmp), 0o755))
	srv, err := Mount(dir, Layers{Lower: lowers, Upper: upper, Work: work}, opts)
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	m := &testMount{dir: dir, upper: upper, work: work, lowers: lowers, srv: srv}
	t.Cleanup(func() { m.unmount(t) })
	return m
}

func (m *testMount) unmount(t *testing.T) {
	if m.srv == nil {
		return
	}
	if err := m.srv.Unmount(); err != nil {
		t.Errorf("Unmount: %v", err)
		_ = unix.Unmount(m.dir, unix.MNT_DETACH)
	}
	m.srv = nil
}

func (m *testMount) path(p string) string { return filepath.Join(m.dir, p) }

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeFile(t testing.TB, path, data string, mode os.FileMode) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(path), 0o755))
	must(t, os.WriteFile(path, []byte(data), mode))
	must(t, unix.Chmod(path, uint32(mode)))
}

func itoa(i int) string {
	return string(rune('0'+i/100%10)) + string(rune('0'+i/10%10)) + string(rune('0'+i%10))
}

// wantErrno asserts err is the errno want.
func wantErrno(t testing.TB, err error, want unix.Errno, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want %v", what, want)
	}
	var e unix.Errno
	for u := err; u != nil; {
		if x, ok := u.(unix.Errno); ok {
			e = x
			break
		}
		if w, ok := u.(interface{ Unwrap() error }); ok {
			u = w.Unwrap()
		} else {
			break
		}
	}
	if e != want {
		t.Fatalf("%s: %v, want %v", what, err, want)
	}
}

func isWhiteoutPath(t testing.TB, p string) bool {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return false
	}
	return isWhiteout(&st)
}

var time1 = time.Unix(1500000000, 0)

// lockThread pins the goroutine to its thread; unlockThreadDirty leaves it
// pinned, so the thread, whose identity was changed, dies with the
// goroutine instead of serving others.
func lockThread()        { runtime.LockOSThread() }
func unlockThreadDirty() {}

// Tests that map files of the mount must not serve it from their own
// process: a page fault holds the process's mmap lock while it waits for
// the server, and the Go runtime of an in-process server may need that
// lock to grow its heap. mountServed runs the server in a child process
// (this test binary again, see TestMain).
const serveEnv = "OVERLAYFUSE_TEST_SERVE"

func TestMain(m *testing.M) {
	// As the commands do at start; serving children inherit it.
	procsetup.Setup()
	if spec := os.Getenv(serveEnv); spec != "" {
		os.Exit(serveChild(spec))
	}
	if spec := os.Getenv(workerEnv); spec != "" {
		os.Exit(concurrencyWorker(spec))
	}
	os.Exit(m.Run())
}

// serveSpec is what the child mounts.
type serveSpec struct {
	Dir    string
	Layers Layers
	Opts   Options
	// NoFile, when set, is the child's RLIMIT_NOFILE, soft and hard;
	// Limited: the child runs under it already (see execLimited).
	NoFile  uint64 `json:",omitempty"`
	Limited bool   `json:",omitempty"`
	// Keep: send the mount's hand-over files over the unix socket at fd
	// 3 (resume_test.go). Resume: take the mount over from the hand-over
	// files at fds 3 (connection) and 4 (state) instead of mounting.
	Keep   bool `json:",omitempty"`
	Resume bool `json:",omitempty"`
}

func serveChild(spec string) int {
	var s serveSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if s.NoFile > 0 && !s.Limited {
		return execLimited(s)
	}
	srv, err := serveMount(s)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var rl syscall.Rlimit
	if s.Limited && (syscall.Getrlimit(unix.RLIMIT_NOFILE, &rl) != nil || rl.Cur != s.NoFile) {
		fmt.Fprintf(os.Stderr, "RLIMIT_NOFILE is %d, want %d\n", rl.Cur, s.NoFile)
		_ = srv.Unmount()
		return 1
	}
	fmt.Printf("ready %v\n", srv.PassthroughActive())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGTERM, unix.SIGINT, unix.SIGUSR1)
	go func() {
		if <-sig == unix.SIGUSR1 {
			// A hand-over: stop serving, keep the mount, exit.
			if err := srv.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, "stop:", err)
				os.Exit(1)
			}
			os.Exit(0)
		}
		_ = srv.Unmount()
	}()
	srv.Wait()
	return 0
}

// execLimited runs the child again under RLIMIT_NOFILE s.NoFile, soft
// and hard, and without CAP_SYS_RESOURCE, so that the mount cannot lift
// the limit (root may raise a hard limit). Capabilities are per thread:
// the one that drops it is the one that execs.
func execLimited(s serveSpec) int {
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_CAPBSET_DROP, unix.CAP_SYS_RESOURCE, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "drop CAP_SYS_RESOURCE:", err)
		return 1
	}
	// syscall's Setrlimit, so that exec does not put back the soft
	// limit the Go runtime started with.
	if err := syscall.Setrlimit(unix.RLIMIT_NOFILE, &syscall.Rlimit{Cur: s.NoFile, Max: s.NoFile}); err != nil {
		fmt.Fprintln(os.Stderr, "setrlimit:", err)
		return 1
	}
	s.Limited = true
	spec, err := json.Marshal(s)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env := []string{serveEnv + "=" + string(spec)}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, serveEnv+"=") {
			env = append(env, kv)
		}
	}
	err = syscall.Exec("/proc/self/exe", os.Args, env)
	fmt.Fprintln(os.Stderr, "exec:", err)
	return 1
}

// mountServed is mountLayers with the server in a child process.
func mountServed(t *testing.T, lowers []string, upper, work string, opts Options) *testMount {
	t.Helper()
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "merged")
	must(t, os.Mkdir(dir, 0o755))
	MountInChild(t, dir, Layers{Lower: lowers, Upper: upper, Work: work}, opts)
	return &testMount{dir: dir, upper: upper, work: work, lowers: lowers}
}

// MountInChild mounts layers at dir, served by a child process, and
// returns the function that unmounts it (also run at cleanup) and whether
// passthrough is active. Exported for the differential tests.
func MountInChild(t testing.TB, dir string, layers Layers, opts Options) (unmount func() error, passthrough bool) {
	t.Helper()
	return mountInChild(t, serveSpec{Dir: dir, Layers: layers, Opts: opts})
}

func mountInChild(t testing.TB, s serveSpec) (unmount func() error, passthrough bool) {
	t.Helper()
	testutil.RequireFUSE(t)
	dir := s.Dir
	spec, err := json.Marshal(s)
	must(t, err)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), serveEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	var once sync.Once
	var uerr error
	unmount = func() error {
		once.Do(func() {
			_ = cmd.Process.Signal(unix.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case uerr = <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
				uerr = fmt.Errorf("server process did not end")
			}
			if err := unix.Unmount(dir, unix.MNT_DETACH); err == nil && uerr == nil {
				uerr = fmt.Errorf("mount %s was still there", dir)
			}
		})
		return uerr
	}
	t.Cleanup(func() { _ = unmount() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready ") {
		t.Fatalf("server process: %q %v", line, err)
	}
	return unmount, line == "ready true\n"
}
