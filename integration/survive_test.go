package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/integration/harness"
	"github.com/overlayfuse/overlayfuse/integration/image"
)

// Issue 9: running containers do not notice that the daemon serving their
// root filesystems was killed (SIGKILL) or upgraded in place (SIGTERM, then
// another build). Each of survivors containers runs survivalLoop, which
// checks every command it runs, until the test stops it.
const survivors = 10

// survivalLoop runs in a container of the cases image with the host
// directory /out bind-mounted (outside the overlay, so it records even a
// dead root filesystem). Each iteration makes a directory, creates, reads,
// renames, links and unlinks a file, copies a lower file, appends to a
// lower file (its copy-up, the first time) and touches a lower hard link,
// then logs "<iteration> <uptime>" if all of that worked. A failed command
// is recorded in /out/fails (the 20th ends the loop). /out/ping asks it to write a line to the FIFO /out/pong once
// the iteration in progress is done; /out/stop ends the loop, and the tree
// it wrote is printed.
const survivalLoop = `o=/out; i=0; nf=0
fail() { ok=; nf=$((nf+1)); echo "FAIL $i: $*" >> $o/fails; [ $nf -lt 20 ] || exit 1; }
mkdir /w || fail "mkdir /w"
echo >> /data/overwrite.txt || fail "end the lower file's last line"
while [ ! -e $o/stop ]; do
  i=$((i+1)); d=/w/$i; ok=1
  mkdir $d || fail mkdir
  echo "data $i" > $d/f || fail create
  [ "$(cat $d/f)" = "data $i" ] || fail read
  mv $d/f $d/g || fail rename
  [ ! -e $d/f ] || fail "rename left its source"
  ln $d/g $d/h || fail link
  rm $d/h || fail unlink
  cp /data/keep.txt $d/c || fail "copy lower file"
  echo $i >> /data/overwrite.txt || fail "append to lower file"
  [ "$(tail -n 1 /data/overwrite.txt)" = "$i" ] || fail "read appended line"
  touch /data/hard1 || fail "touch lower hard link"
  read up rest < /proc/uptime
  [ -z "$ok" ] || echo "$i $up" >> $o/log
  if [ -e $o/ping ]; then rm $o/ping; echo $i > $o/pong; fi
done
echo "iterations $i"
find /w -type f | sort | while read -r f; do echo "$f $(cat $f)"; done
echo "overwrite.txt $(cat /data/overwrite.txt | tr '\n' ' ')"
`

// survivor is one container running survivalLoop.
type survivor struct {
	name, out string
	pong      *os.File // the FIFO, opened read-write: never EOF, never blocks to open
	done      chan struct{}
	stdout    string
	err       error
}

// startSurvivors runs the containers and waits until each has completed
// an iteration.
func startSurvivors(t *testing.T, e *harness.Env) []*survivor {
	t.Helper()
	var ss []*survivor
	for range survivors {
		s := &survivor{name: id("survivor"), done: make(chan struct{})}
		s.out = filepath.Join(e.Dir, "out", s.name)
		if err := os.MkdirAll(s.out, 0o755); err != nil {
			t.Fatal(err)
		}
		pong := filepath.Join(s.out, "pong")
		if err := unix.Mkfifo(pong, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(pong, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		s.pong = f
		t.Cleanup(func() { removeContainer(t, e, s.name) })
		go func() {
			defer close(s.done)
			s.stdout, s.err = e.Run(10*time.Minute, filepath.Join(binDir, "ctr"), "--address", e.Address, "--namespace", e.Namespace,
				"run", "--rm", "--snapshotter", snapshotter,
				"--mount", "type=bind,src="+s.out+",dst=/out,options=rbind:rw",
				image.CasesName, s.name, "/bin/sh", "-c", survivalLoop)
		}()
		ss = append(ss, s)
	}
	for _, s := range ss {
		s.ping(t)
	}
	return ss
}

// ping waits until s completes an iteration begun after the call. One
// that has ended is reported once, by stop.
func (s *survivor) ping(t *testing.T) {
	t.Helper()
	select {
	case <-s.done:
		return
	default:
	}
	// Called from several goroutines: no t.Fatal.
	if err := os.WriteFile(filepath.Join(s.out, "ping"), nil, 0o644); err != nil {
		t.Error(err)
		return
	}
	got := make(chan struct{})
	go func() {
		_, _ = s.pong.Read(make([]byte, 64)) // the container writes one line
		close(got)
	}()
	select {
	case <-got:
		return
	case <-s.done:
	case <-time.After(2 * time.Minute):
		t.Errorf("%s: no iteration completed in 2 minutes", s.name)
	}
	_ = s.pong.SetReadDeadline(time.Now()) // release the reader
	<-got
	_ = s.pong.SetReadDeadline(time.Time{})
}

func (s *survivor) fails() string {
	b, _ := os.ReadFile(filepath.Join(s.out, "fails"))
	return string(b)
}

// stop ends s's loop and checks that no command failed and that its tree
// is exactly what it wrote.
func (s *survivor) stop(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.out, "stop"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
	case <-time.After(5 * time.Minute):
		t.Errorf("%s did not stop", s.name)
		return
	}
	if f := s.fails(); f != "" || s.err != nil {
		lines := strings.Split(strings.TrimSpace(f), "\n")
		exit := "exit status 0"
		var ee *exec.ExitError
		if errors.As(s.err, &ee) {
			exit = ee.String()
		} else if s.err != nil {
			exit = s.err.Error()
		}
		t.Errorf("%s: %d failed commands (loop: %s), first: %q", s.name, len(lines), exit, lines[:min(len(lines), 3)])
		return
	}
	first, _, _ := strings.Cut(s.stdout, "\n")
	n, err := strconv.Atoi(strings.TrimPrefix(first, "iterations "))
	if err != nil {
		t.Errorf("%s: output %q", s.name, s.stdout)
		return
	}
	sameLines(t, s.name+": final tree", s.stdout, survivalTree(n))
}

// survivalTree is what survivalLoop prints after n iterations.
func survivalTree(n int) string {
	var files []string
	appended := "v3 "
	for i := 1; i <= n; i++ {
		files = append(files, fmt.Sprintf("/w/%d/c keep", i), fmt.Sprintf("/w/%d/g data %d", i, i))
		appended += fmt.Sprintf("%d ", i)
	}
	sort.Strings(files)
	return fmt.Sprintf("iterations %d\n%s\noverwrite.txt %s\n", n, strings.Join(files, "\n"), appended)
}

// uptime is the host's /proc/uptime, the clock survivalLoop logs with.
func uptime(t *testing.T) float64 {
	t.Helper()
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Fatal(err)
	}
	f, err := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// pause is how long s went without completing an iteration after since
// (the uptime the new daemon was started at): the time to its first
// iteration logged after it.
func (s *survivor) pause(since float64) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join(s.out, "log"))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		at, err := strconv.ParseFloat(f[1], 64)
		if err == nil && at >= since {
			return time.Duration((at - since) * float64(time.Second)), nil
		}
	}
	return 0, errors.New("no iteration logged after the restart")
}

// survive runs the containers on e, restarts the daemon with restart
// (which returns the uptime at which the new daemon was started) while
// they run, and checks that none of them noticed.
func survive(t *testing.T, e *harness.Env, restart func() (float64, error)) {
	importCases(t, e)
	ss := startSurvivors(t, e)

	since, err := restart()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Go(func() {
			s.ping(t)
			s.ping(t) // an iteration begun after the restart, too
		})
	}
	wg.Wait()
	var worst time.Duration
	for _, s := range ss {
		s.stop(t)
		p, err := s.pause(since)
		if err != nil {
			t.Errorf("%s: %v", s.name, err)
			continue
		}
		t.Logf("%s: first clean iteration %v after the new daemon's start", s.name, p)
		worst = max(worst, p)
	}
	if !t.Failed() {
		t.Logf("pause: at most %v from the new daemon's start to a clean iteration in each of %d containers", worst, len(ss))
	}
}

// The daemon is killed with SIGKILL while the containers run, then started
// again.
func TestSurviveKill(t *testing.T) {
	if snapshotter != "overlayfuse" {
		t.Skip("the daemon's crash is what this tests; baseline has none")
	}
	e := newEnv(t)
	survive(t, e, func() (float64, error) {
		if err := e.StopDaemon(syscall.SIGKILL); err != nil {
			return 0, err
		}
		since := uptime(t)
		return since, e.StartDaemon()
	})
}

// The daemon is stopped with SIGTERM while the containers run, and a
// build of another version takes over.
func TestSurviveUpgrade(t *testing.T) {
	if snapshotter != "overlayfuse" {
		t.Skip("the daemon's upgrade is what this tests; baseline has none")
	}
	dir := t.TempDir()
	old, next := filepath.Join(dir, "old"), filepath.Join(dir, "next")
	for bin, version := range map[string]string{old: "v9.0.0-old", next: "v9.0.1-next"} {
		out, err := exec.Command("go", "build", "-ldflags", "-X main.version="+version, "-o", bin, "../cmd/containerd-overlay-grpc").CombinedOutput()
		if err != nil {
			t.Fatalf("build %s: %v\n%s", version, err, out)
		}
	}
	e := newEnvWith(t, harness.Options{Daemon: old})
	survive(t, e, func() (float64, error) {
		if err := e.StopDaemon(syscall.SIGTERM); err != nil {
			return 0, err
		}
		e.SetDaemon(next)
		since := uptime(t)
		return since, e.StartDaemon()
	})
	log, err := e.DaemonLog()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"v9.0.0-old", "v9.0.1-next"} {
		if !strings.Contains(log, "version="+v) {
			t.Errorf("daemon log does not show version %s running", v)
		}
	}
}
