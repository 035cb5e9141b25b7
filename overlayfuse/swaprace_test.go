package overlayfuse

import (
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// swapRacer is a host-side writer that, as fast as inotify tells it,
// swaps every new entry of some directories for a symlink to a canary
// file: a name looked up twice by the daemon then leads to the canary.
type swapRacer struct {
	ino   int
	stop  [2]int
	dirs  map[int32]int // watch descriptor -> directory fd
	swaps atomic.Int64
	done  sync.WaitGroup
}

func startSwapRacer(t *testing.T, canary string, dirs ...string) *swapRacer {
	t.Helper()
	ino, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	must(t, err)
	r := &swapRacer{ino: ino, dirs: map[int32]int{}}
	must(t, unix.Pipe2(r.stop[:], unix.O_CLOEXEC))
	for _, d := range dirs {
		fd, err := unix.Open(d, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		must(t, err)
		wd, err := unix.InotifyAddWatch(ino, d, unix.IN_CREATE)
		must(t, err)
		r.dirs[int32(wd)] = fd
	}
	r.done.Add(1)
	go r.run(canary)
	t.Cleanup(r.close)
	return r
}

func (r *swapRacer) run(canary string) {
	defer r.done.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := make([]byte, 64<<10)
	fds := []unix.PollFd{{Fd: int32(r.ino), Events: unix.POLLIN}, {Fd: int32(r.stop[0]), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		n, err := unix.Read(r.ino, buf)
		if err != nil {
			continue
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if dfd, ok := r.dirs[ev.Wd]; ok && name != "" && !strings.HasSuffix(name, ".r") {
				r.swap(dfd, name, canary)
			}
		}
	}
}

// swap exchanges name with a symlink to canary; the original stays
// beside it as name.r.
func (r *swapRacer) swap(dfd int, name, canary string) {
	var st unix.Stat_t
	if lstatAt(dfd, name, &st) != nil || isWhiteout(&st) {
		return
	}
	if unix.Symlinkat(canary, dfd, name+".r") != nil {
		return
	}
	if unix.Renameat2(dfd, name+".r", dfd, name, unix.RENAME_EXCHANGE) == nil {
		r.swaps.Add(1)
	} else {
		_ = unix.Unlinkat(dfd, name+".r", 0)
	}
}

func (r *swapRacer) close() {
	if r.ino < 0 {
		return
	}
	_, _ = unix.Write(r.stop[1], []byte{0})
	r.done.Wait()
	unix.Close(r.ino)
	unix.Close(r.stop[0])
	unix.Close(r.stop[1])
	for _, fd := range r.dirs {
		unix.Close(fd)
	}
	r.ino = -1
}

// canaryState is what the daemon must never change of a host file.
func canaryState(t *testing.T, p string) string {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(p, &st))
	names, err := xpath{p: p, link: true}.listAll()
	must(t, err)
	slices.Sort(names)
	return fmt.Sprintf("mode %o owner %d:%d xattrs %q", st.Mode, st.Uid, st.Gid, names)
}

// TestSwapRaceNeverFollows races a writer that swaps every new entry of
// the work dir and of an upper dir for a symlink to a canary outside the
// layers against copy-ups of set-id files and directories and against
// creates, mkdirs and mknods by a user: the canary must never change and
// no symlink may be renamed into the upper dir in place of a copy.
func TestSwapRaceNeverFollows(t *testing.T) {
	lowers, upper, work := newLayers(t, 1)
	const n = 40
	for i := range n {
		writeFile(t, filepath.Join(lowers[0], "f"+itoa(i)), strings.Repeat("x", 4096), 0o4755)
		d := filepath.Join(lowers[0], "d"+itoa(i))
		must(t, os.Mkdir(d, 0o755))
		must(t, unix.Chmod(d, 0o2755))
		writeFile(t, filepath.Join(lowers[0], "pub", "w"+itoa(i)), "w", 0o644)
	}
	pub := filepath.Join(lowers[0], "pub")
	must(t, os.Chown(pub, 1000, 1000))
	must(t, unix.Chmod(pub, 0o2777))
	canary := filepath.Join(t.TempDir(), "canary")
	writeFile(t, canary, "canary", 0o600)
	must(t, unix.Lsetxattr(canary, "trusted.canary", []byte("1"), 0))
	before := canaryState(t, canary)

	m := mountLayers(t, lowers, upper, work, Options{Logger: log.New(io.Discard, "", 0)})
	// Deleted lower names: creating them again builds in the work dir.
	for i := range n {
		must(t, os.Remove(m.path("pub/w"+itoa(i))))
	}
	r := startSwapRacer(t, canary, filepath.Join(work, workSubdir), filepath.Join(upper, "pub"))

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		// A user's thread, left locked so it dies with the goroutine.
		lockThread()
		defer unlockThreadDirty()
		if err := unix.Setfsgid(1000); err != nil {
			t.Error(err)
			return
		}
		if err := unix.Setfsuid(1000); err != nil {
			t.Error(err)
			return
		}
		for i := range n {
			for _, name := range []string{"pub/w" + itoa(i), "pub/c" + itoa(i)} {
				if fd, err := unix.Open(m.path(name), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o6755); err == nil {
					unix.Close(fd)
				}
			}
			_ = unix.Mkdir(m.path("pub/m"+itoa(i)), 0o755)
			_ = unix.Mknod(m.path("pub/p"+itoa(i)), unix.S_IFIFO|0o6755, 0)
		}
	}()
	for i := range n {
		_ = os.Chtimes(m.path("f"+itoa(i)), time1, time1)
		_ = os.Chtimes(m.path("d"+itoa(i)), time1, time1)
	}
	wg.Wait()
	r.close()

	if r.swaps.Load() == 0 {
		t.Fatal("the racer swapped nothing: the test tested nothing")
	}
	if after := canaryState(t, canary); after != before {
		t.Errorf("canary outside the layers changed: %s, was %s", after, before)
	}
	for i := range n {
		for _, name := range []string{"f" + itoa(i), "d" + itoa(i)} {
			var st unix.Stat_t
			if unix.Lstat(filepath.Join(upper, name), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				t.Errorf("upper %s is a symlink in place of the copied-up object", name)
			}
		}
		var st unix.Stat_t
		if unix.Lstat(filepath.Join(upper, "pub/w"+itoa(i)), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			t.Errorf("upper pub/w%s is a symlink in place of the file made over a whiteout", itoa(i))
		}
	}
	t.Logf("%d swaps", r.swaps.Load())
}
