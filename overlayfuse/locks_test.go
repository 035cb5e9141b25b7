package overlayfuse

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A lock holder is this test binary again, run as a child process that
// takes commands on stdin, one a line, and answers each on stdout:
//
//	open r|w             open the file read-only or read-write (fd 0..)
//	close FD             close one fd
//	flock FD ex|sh|un nb|wait
//	lk FD setlk|setlkw|getlk|ofdsetlk|ofdsetlkw|ofdgetlk rd|wr|un START LEN
//
// Answers: "ok", "err ERRNO-NAME", or for a get "lk TYPE START LEN PID".
// Its exit (stdin closed) closes every fd.
const lockChildEnv = "OVERLAYFUSE_TEST_LOCKER"

func init() {
	if p := os.Getenv(lockChildEnv); p != "" {
		os.Exit(lockChild(p))
	}
}

func lockChild(path string) int {
	var fds []int
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		fd := func() int {
			i, _ := strconv.Atoi(f[1])
			return fds[i]
		}
		var err error
		answer := "ok"
		switch f[0] {
		case "open":
			flags := unix.O_RDONLY
			if f[1] == "w" {
				flags = unix.O_RDWR
			}
			var fd int
			if fd, err = unix.Open(path, flags|unix.O_CLOEXEC, 0); err == nil {
				fds = append(fds, fd)
			}
		case "close":
			err = unix.Close(fd())
		case "flock":
			how := map[string]int{"ex": unix.LOCK_EX, "sh": unix.LOCK_SH, "un": unix.LOCK_UN}[f[2]]
			if f[3] == "nb" {
				how |= unix.LOCK_NB
			}
			err = unix.Flock(fd(), how)
		case "lk":
			cmd := map[string]int{"setlk": unix.F_SETLK, "setlkw": unix.F_SETLKW, "getlk": unix.F_GETLK,
				"ofdsetlk": unix.F_OFD_SETLK, "ofdsetlkw": unix.F_OFD_SETLKW, "ofdgetlk": unix.F_OFD_GETLK}[f[2]]
			typ := map[string]int16{"rd": unix.F_RDLCK, "wr": unix.F_WRLCK, "un": unix.F_UNLCK}[f[3]]
			start, _ := strconv.ParseInt(f[4], 10, 64)
			n, _ := strconv.ParseInt(f[5], 10, 64)
			lk := unix.Flock_t{Type: typ, Whence: io.SeekStart, Start: start, Len: n}
			if err = unix.FcntlFlock(uintptr(fd()), cmd, &lk); err == nil && strings.HasSuffix(f[2], "getlk") {
				answer = fmt.Sprintf("lk %s %d %d %d", map[int16]string{unix.F_RDLCK: "rd", unix.F_WRLCK: "wr", unix.F_UNLCK: "un"}[lk.Type],
					lk.Start, lk.Len, lk.Pid)
			}
		}
		if err != nil {
			answer = "err " + unix.ErrnoName(err.(unix.Errno))
		}
		fmt.Println(answer)
	}
	return 0
}

// locker is a running lock holder.
type locker struct {
	t   *testing.T
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func startLocker(t *testing.T, path string) *locker {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), lockChildEnv+"="+path)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	must(t, err)
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	l := &locker{t: t, cmd: cmd, in: in, out: bufio.NewReader(out)}
	t.Cleanup(l.exit)
	return l
}

func (l *locker) pid() int { return l.cmd.Process.Pid }

// send gives a command without waiting for its answer.
func (l *locker) send(cmd string) {
	l.t.Helper()
	if _, err := io.WriteString(l.in, cmd+"\n"); err != nil {
		l.t.Fatalf("locker %d: %v", l.pid(), err)
	}
}

// answer reads the answer to the command sent before.
func (l *locker) answer() string {
	l.t.Helper()
	s, err := l.out.ReadString('\n')
	if err != nil {
		l.t.Fatalf("locker %d: %v", l.pid(), err)
	}
	return strings.TrimSpace(s)
}

// do runs a command and checks its answer.
func (l *locker) do(cmd, want string) {
	l.t.Helper()
	l.send(cmd)
	if got := l.answer(); got != want {
		l.t.Fatalf("locker %d: %q: %q, want %q", l.pid(), cmd, got, want)
	}
}

// exit ends the holder, which closes its fds, and waits for it.
func (l *locker) exit() {
	if l.in == nil {
		return
	}
	l.in.Close()
	l.in = nil
	_ = l.cmd.Wait()
}

var lockModes = []struct {
	name string
	opts Options
}{
	{"default", Options{}},
	{"strict", Options{Consistency: ConsistencyStrict}},
	{"passthrough=off", Options{Passthrough: PassthroughOff}},
}

// lockKinds: how a holder that opened the file read-only locks it, and how
// another process that opened it read-write asks for a conflicting lock.
var lockKinds = []struct {
	name       string
	hold, want string
	unlock     string
	getlk      string // a conflicting F_GETLK, for POSIX kinds
}{
	{"flock", "flock 0 ex nb", "flock 0 ex nb", "flock 0 un nb", ""},
	{"posix", "lk 0 setlk rd 0 0", "lk 0 setlk wr 0 0", "lk 0 setlk un 0 0", "lk 0 getlk wr 0 0"},
	{"ofd", "lk 0 ofdsetlk rd 0 0", "lk 0 ofdsetlk wr 0 0", "lk 0 ofdsetlk un 0 0", "lk 0 ofdgetlk wr 0 0"},
}

// waitFor is the blocking form of a lock command.
func waitFor(cmd string) string {
	return strings.NewReplacer("setlk ", "setlkw ", " nb", " wait").Replace(cmd)
}

// TestLockSurvivesCopyUp is xfstests overlay/028: a lock taken through a
// fd of a lower file holds after another process's write open copied the
// file up, and goes when its holder exits.
func TestLockSurvivesCopyUp(t *testing.T) {
	for _, m := range lockModes {
		for _, k := range lockKinds {
			t.Run(m.name+"/"+k.name, func(t *testing.T) {
				lowers, upper, work := newLayers(t, 1)
				writeFile(t, filepath.Join(lowers[0], "foo"), "foo", 0o644)
				mnt := mountLayers(t, lowers, upper, work, m.opts)
				p := mnt.path("foo")

				holder := startLocker(t, p)
				holder.do("open r", "ok")
				holder.do(k.hold, "ok")

				// The copy-up, from this process.
				must(t, os.WriteFile(p, []byte("bar"), 0o644))
				if _, err := os.Stat(filepath.Join(upper, "foo")); err != nil {
					t.Fatalf("no copy-up: %v", err)
				}

				other := startLocker(t, p)
				other.do("open w", "ok")
				other.do(k.want, "err EAGAIN")
				if k.getlk != "" {
					pid := holder.pid()
					if k.name == "ofd" {
						pid = -1
					}
					other.do(k.getlk, fmt.Sprintf("lk rd 0 0 %d", pid))
				}
				// The kernel sends the RELEASE of the holder's last close
				// without waiting for it: wait for the lock.
				holder.exit()
				other.do(waitFor(k.want), "ok")
				other.do(k.unlock, "ok")
			})
		}
	}
}

// TestLockWaitAcrossCopyUp: a blocking lock request waits for the holder
// across a copy-up and is granted when the holder lets go.
func TestLockWaitAcrossCopyUp(t *testing.T) {
	for _, m := range lockModes {
		for _, k := range lockKinds {
			t.Run(m.name+"/"+k.name, func(t *testing.T) {
				lowers, upper, work := newLayers(t, 1)
				writeFile(t, filepath.Join(lowers[0], "foo"), "foo", 0o644)
				mnt := mountLayers(t, lowers, upper, work, m.opts)
				p := mnt.path("foo")

				holder := startLocker(t, p)
				holder.do("open r", "ok")
				holder.do(k.hold, "ok")
				must(t, os.WriteFile(p, []byte("bar"), 0o644))

				waiter := startLocker(t, p)
				waiter.do("open w", "ok")
				waiter.do(k.want, "err EAGAIN")
				waiter.send(waitFor(k.want))

				// A third process still finds the holder's lock.
				probe := startLocker(t, p)
				probe.do("open w", "ok")
				probe.do(k.want, "err EAGAIN")
				if k.getlk != "" {
					pid := holder.pid()
					if k.name == "ofd" {
						pid = -1
					}
					probe.do(k.getlk, fmt.Sprintf("lk rd 0 0 %d", pid))
				}

				holder.do(k.unlock, "ok")
				if got := waiter.answer(); got != "ok" {
					t.Fatalf("waiter: %q", got)
				}
				probe.do(k.want, "err EAGAIN")
				if k.getlk != "" && k.name == "posix" {
					probe.do(k.getlk, fmt.Sprintf("lk wr 0 0 %d", waiter.pid()))
				}
				waiter.exit()
				probe.do(waitFor(k.want), "ok")
			})
		}
	}
}

// TestPosixLockCloseReleases: a process's POSIX locks on a file go when it
// closes any fd of the file, also one opened after the lock was taken;
// its locks on other ranges and other owners' locks stay apart.
func TestPosixLockCloseReleases(t *testing.T) {
	for _, m := range lockModes {
		t.Run(m.name, func(t *testing.T) {
			lowers, upper, work := newLayers(t, 1)
			writeFile(t, filepath.Join(lowers[0], "foo"), "0123456789", 0o644)
			mnt := mountLayers(t, lowers, upper, work, m.opts)
			p := mnt.path("foo")

			a := startLocker(t, p)
			a.do("open w", "ok")
			a.do("lk 0 setlk wr 0 4", "ok")
			a.do("lk 0 setlk rd 6 2", "ok")
			b := startLocker(t, p)
			b.do("open w", "ok")
			b.do("lk 0 getlk wr 2 1", fmt.Sprintf("lk wr 0 4 %d", a.pid()))
			b.do("lk 0 setlk rd 7 3", "ok") // shares 7 with a's read lock
			b.do("lk 0 setlk wr 4 2", "ok") // the gap between a's ranges
			b.do("lk 0 setlk wr 6 1", "err EAGAIN")
			// Unlocking the middle of a range splits it.
			a.do("lk 0 setlk un 1 2", "ok")
			b.do("lk 0 setlk wr 1 2", "ok")
			b.do("lk 0 getlk wr 0 1", fmt.Sprintf("lk wr 0 1 %d", a.pid()))
			b.do("lk 0 getlk wr 3 1", fmt.Sprintf("lk wr 3 1 %d", a.pid()))

			// a opens and closes a second fd: all of a's locks go.
			a.do("open r", "ok")
			a.do("close 1", "ok")
			b.do("lk 0 getlk wr 0 10", "lk un 0 10 0")
			b.do("lk 0 setlk wr 0 4", "ok")
			b.exit()
			a.do("lk 0 setlk wr 0 0", "ok")
		})
	}
}
