package overlayfuse

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestVolatileMark: a volatile mount leaves the kernel's mark of one in
// the work dir while it runs; a clean unmount syncs and removes it; a
// mount whose server died keeps it, and then both we and kernel
// overlayfs refuse the upper and work dirs.
func TestVolatileMark(t *testing.T) {
	lowers, upper, work := newLayers(t, 1)
	writeFile(t, filepath.Join(lowers[0], "f"), "lower", 0o644)
	mark := filepath.Join(work, workSubdir, "incompat/volatile/dirty")

	m := mountLayers(t, lowers, upper, work, Options{Volatile: true})
	if _, err := os.Stat(mark); err != nil {
		t.Errorf("volatile mount: no mark: %v", err)
	}
	f, err := os.OpenFile(m.path("f"), os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.WriteString("+")
	must(t, err)
	must(t, f.Sync())
	must(t, f.Close())
	m.unmount(t)
	if _, err := os.Lstat(filepath.Join(work, workSubdir, "incompat")); !os.IsNotExist(err) {
		t.Errorf("after a clean unmount the mark is still there: %v", err)
	}
	if got := testutil.ReadFile(t, filepath.Join(upper, "f")); got != "lower+" {
		t.Errorf("upper f: %q", got)
	}

	// A server that dies (the machine crashing, as far as the upper dir
	// can tell) leaves the mark.
	dir := filepath.Join(t.TempDir(), "m")
	must(t, os.Mkdir(dir, 0o755))
	testutil.RequireFUSE(t)
	spec, err := json.Marshal(serveSpec{Dir: dir, Layers: Layers{Lower: lowers, Upper: upper, Work: work}, Opts: Options{Volatile: true}})
	must(t, err)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), serveEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	line, _ := bufio.NewReader(out).ReadString('\n')
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	_ = unix.Unmount(dir, unix.MNT_DETACH)
	if !strings.HasPrefix(line, "ready") {
		t.Fatalf("volatile server: %q", line)
	}
	if _, err := os.Stat(mark); err != nil {
		t.Fatalf("after the server died: no mark: %v", err)
	}
	dir2 := filepath.Join(t.TempDir(), "m2")
	must(t, os.Mkdir(dir2, 0o755))
	srv, err := Mount(dir2, Layers{Lower: lowers, Upper: upper, Work: work}, Options{})
	if err == nil {
		_ = srv.Unmount()
		t.Fatal("mounted an upper dir that a volatile mount left after a crash")
	}
	if !strings.Contains(err.Error(), "volatile") || !strings.Contains(err.Error(), work) {
		t.Errorf("refusal: %v, want it to name the volatile mark in %s", err, work)
	}
	if _, err := os.Stat(mark); err != nil {
		t.Errorf("the refused mount removed the mark: %v", err)
	}

	testutil.RequireKernelOverlay(t)
	err = unix.Mount("overlay", dir2, "overlay", 0, "lowerdir="+lowers[0]+",upperdir="+upper+",workdir="+work)
	if err == nil {
		_ = unix.Unmount(dir2, unix.MNT_DETACH)
		t.Errorf("kernel overlayfs mounted an upper dir that our volatile mount left after a crash")
	}
}

// ext4Scratch mounts a fresh small ext4 filesystem (on a loop device,
// with a long journal commit interval) and returns its mountpoint and a
// function that reads how many KiB were written to it so far.
func ext4Scratch(t *testing.T) (string, func() int64) {
	t.Helper()
	testutil.RequireRoot(t)
	base := t.TempDir()
	img, dir := filepath.Join(base, "img"), filepath.Join(base, "fs")
	must(t, os.Mkdir(dir, 0o755))
	f, err := os.Create(img)
	must(t, err)
	must(t, f.Truncate(256<<20))
	must(t, f.Close())
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop,commit=600", img, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount ext4 image: %v %s", err, out)
	}
	// Lazily: fds of the upper that the overlay's nodes hold may outlive
	// its unmount.
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	out, err := exec.Command("findmnt", "-no", "SOURCE", dir).Output()
	must(t, err)
	dev := filepath.Base(strings.TrimSpace(string(out)))
	return dir, func() int64 {
		b, err := os.ReadFile("/sys/fs/ext4/" + dev + "/session_write_kbytes")
		must(t, err)
		var kb int64
		for _, c := range strings.TrimSpace(string(b)) {
			kb = kb*10 + int64(c-'0')
		}
		return kb
	}
}

// TestVolatileSkipsSync: on a volatile mount neither fsync nor copy-up's
// fdatasync writes anything to the upper filesystem; the clean unmount
// does. Without volatile, both do. Measured as what the upper's own
// ext4 filesystem wrote.
func TestVolatileSkipsSync(t *testing.T) {
	const size = 8 << 20
	for _, volatile := range []bool{false, true} {
		fs, written := ext4Scratch(t)
		lower := t.TempDir()
		upper, work := filepath.Join(fs, "upper"), filepath.Join(fs, "work")
		must(t, os.Mkdir(upper, 0o755))
		must(t, os.Mkdir(work, 0o755))
		writeFile(t, filepath.Join(lower, "big"), strings.Repeat("l", size), 0o644)
		m := mountLayers(t, []string{lower}, upper, work, Options{Volatile: volatile})
		kb0 := written()
		must(t, os.Chmod(m.path("big"), 0o600)) // copy-up
		f, err := os.Create(m.path("new"))
		must(t, err)
		_, err = f.Write([]byte(strings.Repeat("n", size)))
		must(t, err)
		must(t, f.Sync())
		must(t, f.Close())
		synced := written() - kb0
		m.unmount(t)
		total := written() - kb0
		t.Logf("volatile=%v: %d KiB written before unmount, %d KiB after", volatile, synced, total)
		if want := int64(2 * size >> 10); !volatile && synced < want {
			t.Errorf("without volatile only %d KiB reached the upper fs after fsync and copy-up, want %d", synced, want)
		}
		if volatile && synced > size>>10/4 {
			t.Errorf("volatile: %d KiB reached the upper fs before unmount, want almost nothing", synced)
		}
		if volatile && total < int64(2*size>>10) {
			t.Errorf("volatile: after the clean unmount only %d KiB were written, want all %d", total, 2*size>>10)
		}
	}
}
