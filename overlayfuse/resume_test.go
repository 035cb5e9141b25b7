package overlayfuse

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
)

// serveMount mounts, or takes a mount over, for a serving child.
func serveMount(s serveSpec) (*Server, error) {
	if s.Resume {
		h := Handover{Dev: os.NewFile(3, "dev"), State: os.NewFile(4, "state")}
		defer h.Close()
		return Resume(s.Dir, s.Layers, s.Opts, h)
	}
	srv, err := Mount(s.Dir, s.Layers, s.Opts)
	if err != nil || !s.Keep {
		return srv, err
	}
	h, err := srv.Handover()
	if err != nil {
		_ = srv.Unmount()
		return nil, err
	}
	defer h.Close()
	rights := unix.UnixRights(int(h.Dev.Fd()), int(h.State.Fd()))
	if err := unix.Sendmsg(3, []byte("h"), rights, nil, 0); err != nil {
		_ = srv.Unmount()
		return nil, fmt.Errorf("send hand-over: %w", err)
	}
	return srv, nil
}

// server is a serving child that can be killed.
type server struct {
	cmd  *exec.Cmd
	done chan error
}

// startServer starts a child serving s; extra are its fds from 3 on.
func startServer(t *testing.T, s serveSpec, extra ...*os.File) *server {
	t.Helper()
	spec, err := json.Marshal(s)
	must(t, err)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), serveEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	cmd.ExtraFiles = extra
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	srv := &server{cmd: cmd, done: make(chan error, 1)}
	go func() { srv.done <- cmd.Wait() }()
	t.Cleanup(func() { srv.kill() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready ") {
		t.Fatalf("server process: %q %v", line, err)
	}
	return srv
}

// handOver asks the server to stop for a hand-over and waits for it.
func (s *server) handOver(t *testing.T) {
	_ = s.cmd.Process.Signal(unix.SIGUSR1)
	if err := <-s.done; err != nil {
		t.Errorf("server stopping for a hand-over: %v", err)
	}
	s.done <- nil
}

func (s *server) kill() {
	_ = s.cmd.Process.Kill()
	<-s.done
	s.done <- nil // for a second kill
}

// stop ends the server with SIGTERM, which unmounts.
func (s *server) stop(t *testing.T) {
	_ = s.cmd.Process.Signal(unix.SIGTERM)
	select {
	case err := <-s.done:
		s.done <- err
		if err != nil {
			t.Errorf("server: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("server did not end")
	}
}

// keep starts a child that keeps its mount's hand-over with the test, as
// a keeper does.
func keep(t *testing.T, s serveSpec) (*server, Handover) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	must(t, err)
	ours, theirs := os.NewFile(uintptr(fds[0]), "keeper"), os.NewFile(uintptr(fds[1]), "server")
	defer ours.Close()
	s.Keep = true
	srv := startServer(t, s, theirs)
	theirs.Close()
	buf, oob := make([]byte, 8), make([]byte, unix.CmsgSpace(2*4))
	_, oobn, _, _, err := unix.Recvmsg(int(ours.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
	must(t, err)
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	must(t, err)
	if len(msgs) != 1 {
		t.Fatalf("hand-over: %d control messages", len(msgs))
	}
	got, err := unix.ParseUnixRights(&msgs[0])
	must(t, err)
	if len(got) != 2 {
		t.Fatalf("hand-over: %d fds", len(got))
	}
	h := Handover{Dev: os.NewFile(uintptr(got[0]), "dev"), State: os.NewFile(uintptr(got[1]), "state")}
	t.Cleanup(func() { h.Close() })
	return srv, h
}

// resumeWorker is a shell loop that checks each result: creates, writes,
// renames, hard links, copies up and deletes, and prints one line per
// round. It exits non-zero at the first failed command.
const resumeWorker = `set -e
i=0
while [ $i -lt $ROUNDS ]; do
	mkdir d$i
	echo "round $i" > d$i/f
	mv d$i/f d$i/g
	[ "$(cat d$i/g)" = "round $i" ]
	ln d$i/g d$i/h
	[ "$(cat d$i/h)" = "round $i" ]
	echo "$i" >> lower$((i % 8))
	[ "$(tail -n 1 lower$((i % 8)))" = "$i" ]
	rm d$i/g
	mkdir d$i/sub && touch d$i/sub/x && rm -r d$i/sub
	ls -l d$i > /dev/null
	echo "ok $i"
	i=$((i + 1))
done
`

// TestResumeAfterKill kills the server of a mount with SIGKILL while a
// process works in it and fds are open, and takes the mount over in a
// new server: the process goes on without one failed call, the open fds
// keep working, and the tree is what they wrote.
func TestResumeAfterKill(t *testing.T) {
	testResume(t, (*server).kill)
}

// TestResumeAfterStop is TestResumeAfterKill with a graceful hand-over:
// the server stops (Stop) and exits, the next one resumes.
func TestResumeAfterStop(t *testing.T) {
	testResume(t, func(s *server) { s.handOver(t) })
}

func testResume(t *testing.T, end func(*server)) {
	testutil.RequireFUSE(t)
	for _, mode := range []struct {
		name string
		opts Options
	}{
		{"default", Options{}},
		{"strict", Options{Consistency: ConsistencyStrict}},
		{"passthrough-off", Options{Passthrough: PassthroughOff}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			lowers, upper, work := newLayers(t, 1)
			for i := 0; i < 8; i++ {
				writeFile(t, filepath.Join(lowers[0], fmt.Sprintf("lower%d", i)), "lower\n", 0o644)
			}
			writeFile(t, filepath.Join(lowers[0], "ro"), "read only\n", 0o644)
			must(t, os.Mkdir(filepath.Join(lowers[0], "dir"), 0o755))
			for i := 0; i < 50; i++ {
				writeFile(t, filepath.Join(lowers[0], "dir", fmt.Sprintf("e%02d", i)), "", 0o644)
			}
			dir := filepath.Join(t.TempDir(), "merged")
			must(t, os.Mkdir(dir, 0o755))
			spec := serveSpec{Dir: dir, Layers: Layers{Lower: lowers, Upper: upper, Work: work}, Opts: mode.opts}
			first, h := keep(t, spec)
			t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })

			// Held across the kill: a lower file read-only, a new file
			// read-write, a directory half listed.
			ro, err := os.Open(filepath.Join(dir, "ro"))
			must(t, err)
			defer ro.Close()
			rw, err := os.OpenFile(filepath.Join(dir, "new"), os.O_CREATE|os.O_RDWR, 0o644)
			must(t, err)
			defer rw.Close()
			_, err = rw.WriteString("before\n")
			must(t, err)
			d, err := os.Open(filepath.Join(dir, "dir"))
			must(t, err)
			defer d.Close()
			firstNames, err := d.Readdirnames(20)
			must(t, err)

			const rounds = 60
			w := exec.Command("sh", "-c", resumeWorker)
			w.Dir = dir
			w.Env = append(os.Environ(), fmt.Sprintf("ROUNDS=%d", rounds))
			w.Stderr = os.Stderr
			wout, err := w.StdoutPipe()
			must(t, err)
			must(t, w.Start())
			t.Cleanup(func() { _ = w.Process.Kill(); _ = w.Wait() })
			lines := bufio.NewReader(wout)
			for i := 0; i < 5; i++ {
				if _, err := lines.ReadString('\n'); err != nil {
					t.Fatalf("worker: %v", err)
				}
			}

			end(first)
			start := time.Now()
			spec.Resume = true
			second := startServer(t, spec, h.Dev, h.State)
			if _, err := lines.ReadString('\n'); err != nil {
				t.Fatalf("worker after the take-over: %v", err)
			}
			t.Logf("first round after the take-over done %v after the new server started", time.Since(start))
			rest, err := readAll(lines)
			if werr := w.Wait(); werr != nil || err != nil {
				t.Fatalf("worker failed across the take-over: %v %v; output:\n%s", werr, err, rest)
			}

			buf := make([]byte, 64)
			n, err := ro.ReadAt(buf, 0)
			if string(buf[:n]) != "read only\n" {
				t.Errorf("fd opened before: read %q %v", buf[:n], err)
			}
			_, err = rw.WriteString("after\n")
			must(t, err)
			n, err = rw.ReadAt(buf, 0)
			if string(buf[:n]) != "before\nafter\n" {
				t.Errorf("read-write fd opened before: %q %v", buf[:n], err)
			}
			if _, err := rw.Stat(); err != nil {
				t.Errorf("fstat of a fd opened before: %v", err)
			}
			restNames, err := d.Readdirnames(-1)
			must(t, err)
			if got := len(firstNames) + len(restNames); got != 50 {
				t.Errorf("listing across the take-over: %d names, want 50", got)
			}
			for i := 0; i < 8; i++ {
				b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("lower%d", i)))
				must(t, err)
				want := "lower\n"
				for r := i; r < rounds; r += 8 {
					want += fmt.Sprintf("%d\n", r)
				}
				if string(b) != want {
					t.Errorf("lower%d = %q, want %q", i, b, want)
				}
			}
			for i := 0; i < rounds; i++ {
				b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("d%d", i), "h"))
				if err != nil || string(b) != fmt.Sprintf("round %d\n", i) {
					t.Errorf("d%d/h: %q %v", i, b, err)
				}
			}
			ro.Close()
			rw.Close()
			d.Close()
			second.stop(t)
		})
	}
}

func readAll(r *bufio.Reader) (string, error) {
	var b strings.Builder
	_, err := r.WriteTo(&b)
	return b.String(), err
}
