package overlayfuse

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"golang.org/x/sys/unix"
)

// privModes are the mounts the privilege tests run on: kernel overlayfs
// as the reference, then ours.
var privModes = []struct {
	name   string
	opts   Options
	kernel bool
}{
	{"kernel", Options{}, true},
	{"default", Options{}, false},
	{"strict", Options{Consistency: ConsistencyStrict}, false},
	{"passthrough-off", Options{Passthrough: PassthroughOff}, false},
}

// mountPriv mounts lowers+upper (made writable for everyone) with the
// kernel or with us, reachable by other users.
func mountPriv(t *testing.T, kernel bool, opts Options, lowers []string, upper, work string) string {
	t.Helper()
	must(t, os.Chmod(upper, 0o777))
	if !kernel {
		// The tests exec files of the mount: the server must not be
		// this process, whose fork waits for the exec.
		dir := mountServed(t, lowers, upper, work, opts).dir
		must(t, os.Chmod(filepath.Dir(dir), 0o755))
		must(t, os.Chmod(filepath.Dir(filepath.Dir(dir)), 0o755))
		return dir
	}
	testutil.RequireKernelOverlay(t)
	tmp := t.TempDir()
	must(t, os.Chmod(tmp, 0o755))
	must(t, os.Chmod(filepath.Dir(tmp), 0o755))
	dir := filepath.Join(tmp, "k")
	must(t, os.Mkdir(dir, 0o755))
	must(t, unix.Mount("overlay", dir, "overlay", 0, "lowerdir="+strings.Join(lowers, ":")+",upperdir="+upper+",workdir="+work))
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// nobody runs a shell script as uid/gid 65534; step writes a line to its
// stdin and waits for the line it prints next.
type nobody struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func startNobody(t *testing.T, script string, args ...string) *nobody {
	t.Helper()
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, "sh"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	must(t, err)
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return &nobody{cmd: cmd, in: in, out: bufio.NewReader(out)}
}

// expect reads the next line and fails unless it is want.
func (p *nobody) expect(t *testing.T, want string) {
	t.Helper()
	line, err := p.out.ReadString('\n')
	if err != nil || line != want+"\n" {
		t.Fatalf("uid 65534: %q %v, want %q", line, err, want)
	}
}

func (p *nobody) step(t *testing.T, want string) {
	t.Helper()
	if _, err := io.WriteString(p.in, "go\n"); err != nil {
		t.Fatal(err)
	}
	p.expect(t, want)
}

// holdAndWrite: uid 65534 creates path (O_CREAT|O_WRONLY), writes the
// first byte of /usr/bin/id and keeps the fd; at the first step it writes
// the rest through it and closes it. dd writes with write(2) (cat would
// use copy_file_range).
const holdAndWrite = `exec 3>"$1" || exit 1
dd if=/usr/bin/id bs=1 count=1 status=none >&3 || exit 1
echo open; read x
dd if=/usr/bin/id bs=1M skip=1 iflag=skip_bytes status=none >&3 || exit 1
exec 3>&-; echo written; read x`

// TestSetidKilledThroughOldFd: a user's fd opened while the file was
// harmless writes after root made the file setuid root; the set-id bit
// must go, as the kernel drops it for an unprivileged writer, so the
// user's content never runs as root.
func TestSetidKilledThroughOldFd(t *testing.T) {
	idBytes, err := os.ReadFile("/usr/bin/id")
	must(t, err)
	for _, mode := range privModes {
		for _, bit := range []struct {
			name   string
			mode   uint32
			idFlag string // id's flag that prints the effective id it sets
		}{{"setuid", 0o4755, "-u"}, {"setgid", 0o2755, "-g"}} {
			t.Run(mode.name+"/"+bit.name, func(t *testing.T) {
				testutil.RequireRoot(t)
				lowers, upper, work := newLayers(t, 1)
				dir := mountPriv(t, mode.kernel, mode.opts, lowers, upper, work)
				tool := filepath.Join(dir, "tool")
				p := startNobody(t, holdAndWrite, tool)
				p.expect(t, "open")
				must(t, os.Chown(tool, 0, 0))
				must(t, unix.Chmod(tool, bit.mode))
				p.step(t, "written")

				var st unix.Stat_t
				must(t, unix.Stat(tool, &st))
				if st.Mode&07777 != 0o755 || st.Uid != 0 {
					t.Errorf("after the user's write: mode %o uid %d, want 755 uid 0", st.Mode&07777, st.Uid)
				}
				if got, err := os.ReadFile(tool); err != nil || !bytes.Equal(got, idBytes) {
					t.Fatalf("content: %d bytes, %v", len(got), err)
				}
				must(t, unix.Stat(filepath.Join(upper, "tool"), &st))
				if st.Mode&07777 != 0o755 {
					t.Errorf("upper file mode %o, want 755", st.Mode&07777)
				}
				cmd := exec.Command(tool, bit.idFlag)
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
				out, err := cmd.Output()
				if err != nil || string(out) != "65534\n" {
					t.Errorf("the user's content runs with id %s %q (%v), want 65534", bit.idFlag, out, err)
				}
			})
		}
	}
}

// TestCapabilityKilledThroughOldFd: the same with file capabilities,
// which any write drops.
func TestCapabilityKilledThroughOldFd(t *testing.T) {
	capV2 := []byte{0, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} // cap_net_raw
	for _, mode := range privModes {
		t.Run(mode.name, func(t *testing.T) {
			testutil.RequireRoot(t)
			lowers, upper, work := newLayers(t, 1)
			dir := mountPriv(t, mode.kernel, mode.opts, lowers, upper, work)
			tool := filepath.Join(dir, "tool")
			p := startNobody(t, holdAndWrite, tool)
			p.expect(t, "open")
			must(t, os.Chown(tool, 0, 0))
			must(t, os.Chmod(tool, 0o755))
			must(t, unix.Setxattr(tool, capabilityXattr, capV2, 0))
			p.step(t, "written")

			buf := make([]byte, 64)
			if _, err := unix.Getxattr(tool, capabilityXattr, buf); err != unix.ENODATA {
				t.Errorf("security.capability after the user's write: %v, want ENODATA", err)
			}
			if _, err := unix.Getxattr(filepath.Join(upper, "tool"), capabilityXattr, buf); err != unix.ENODATA {
				t.Errorf("security.capability of the upper file: %v, want ENODATA", err)
			}
		})
	}
}

// TestChmodSetidWhileOpen is `exec 7<M/suid; chmod u-s M/suid; cat
// M/suid`: the new open must not mix passthrough with the cached open.
func TestChmodSetidWhileOpen(t *testing.T) {
	for _, mode := range privModes {
		t.Run(mode.name, func(t *testing.T) {
			testutil.RequireRoot(t)
			lowers, upper, work := newLayers(t, 1)
			writeFile(t, filepath.Join(lowers[0], "suid"), "data", 0o4755)
			dir := mountPriv(t, mode.kernel, mode.opts, lowers, upper, work)
			p := filepath.Join(dir, "suid")
			f, err := os.Open(p)
			must(t, err)
			defer f.Close()
			must(t, unix.Chmod(p, 0o755))
			if got, err := os.ReadFile(p); err != nil || string(got) != "data" {
				t.Errorf("cat after chmod u-s: %q %v", got, err)
			}
			// And back: a passthrough open held while the bit returns.
			g, err := os.Open(p)
			must(t, err)
			defer g.Close()
			must(t, f.Close())
			must(t, unix.Chmod(p, 0o4755))
			if got, err := os.ReadFile(p); err != nil || string(got) != "data" {
				t.Errorf("cat after chmod u+s: %q %v", got, err)
			}
		})
	}
}

// TestReopenMagicLink is `exec 3<M/f; echo y >> /proc/self/fd/3`, and the
// same through /proc/self/map_files. Default mode with passthrough cannot
// do it (the old inode's backing file is the lower one): it must fail
// cleanly, with ETXTBSY and without a copy-up.
func TestReopenMagicLink(t *testing.T) {
	for _, mode := range privModes {
		for _, via := range []string{"fd", "map_files"} {
			t.Run(mode.name+"/"+via, func(t *testing.T) {
				testutil.RequireRoot(t)
				lowers, upper, work := newLayers(t, 1)
				writeFile(t, filepath.Join(lowers[0], "f"), "x\n", 0o644)
				dir := mountPriv(t, mode.kernel, mode.opts, lowers, upper, work)
				cannot := mode.name == "default" && passthroughAvailable(t)
				fd, err := unix.Open(filepath.Join(dir, "f"), unix.O_RDONLY, 0)
				must(t, err)
				defer unix.Close(fd)
				link := fmt.Sprintf("/proc/self/fd/%d", fd)
				if via == "map_files" {
					mem, err := unix.Mmap(fd, 0, 2, unix.PROT_READ, unix.MAP_SHARED)
					must(t, err)
					defer unix.Munmap(mem)
					link = mapFilesLink(t, mem)
				}
				w, err := unix.Open(link, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT, 0o644)
				if cannot {
					wantErrno(t, err, unix.ETXTBSY, "open "+link+" for writing")
					// The copy-up before the refusal changes nothing visible.
					if got := testutil.ReadFile(t, filepath.Join(dir, "f")); got != "x\n" {
						t.Errorf("after the failed open the file holds %q, want %q", got, "x\n")
					}
					return
				}
				must(t, err)
				_, err = unix.Write(w, []byte("y\n"))
				must(t, err)
				must(t, unix.Close(w))
				if got := testutil.ReadFile(t, filepath.Join(dir, "f")); got != "x\ny\n" {
					t.Errorf("after the write: %q", got)
				}
				if got := testutil.ReadFile(t, filepath.Join(lowers[0], "f")); got != "x\n" {
					t.Fatalf("the lower file changed: %q", got)
				}
			})
		}
	}
}

// passthroughAvailable: the kernel takes backing files from us.
func passthroughAvailable(t *testing.T) bool {
	lowers, upper, work := newLayers(t, 1)
	return mountLayers(t, lowers, upper, work, Options{}).srv.PassthroughActive()
}

// mapFilesLink is the /proc/self/map_files entry of mapping mem.
func mapFilesLink(t *testing.T, mem []byte) string {
	start := uintptr(unsafe.Pointer(&mem[0]))
	maps, err := os.ReadFile("/proc/self/maps")
	must(t, err)
	for _, line := range strings.Split(string(maps), "\n") {
		r, _, _ := strings.Cut(line, " ")
		var a, b uint64
		if _, err := fmt.Sscanf(r, "%x-%x", &a, &b); err == nil && a == uint64(start) {
			return "/proc/self/map_files/" + r
		}
	}
	t.Fatalf("no mapping at %#x", start)
	return ""
}

// TestSetidAttrsNotCached: the kernel must ask again for the mode of a
// set-id file before exec honours it, since a passthrough write drops the
// bit in the backing file without telling the kernel. The test drops it
// behind the mount's back, as such a write does.
func TestSetidAttrsNotCached(t *testing.T) {
	testutil.RequireRoot(t)
	idBytes, err := os.ReadFile("/usr/bin/id")
	must(t, err)
	lowers, upper, work := newLayers(t, 1)
	dir := mountPriv(t, false, Options{}, lowers, upper, work)
	tool := filepath.Join(dir, "tool")
	must(t, os.WriteFile(tool, idBytes, 0o755))
	must(t, unix.Chmod(tool, 0o4755))
	var st unix.Stat_t
	must(t, unix.Stat(tool, &st))
	if st.Mode&07777 != 0o4755 {
		t.Fatalf("mode %o after chmod 4755", st.Mode&07777)
	}
	must(t, unix.Chmod(filepath.Join(upper, "tool"), 0o755))
	cmd := exec.Command(tool, "-u")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.Output()
	if err != nil || string(out) != "65534\n" {
		t.Errorf("exec after the bit went: euid %q (%v), want 65534", out, err)
	}
}
