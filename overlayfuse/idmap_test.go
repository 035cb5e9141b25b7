package overlayfuse

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// usernsFd is a user namespace with the mapping container 0 -> host
// base, size ids, for an idmapped mount; it lives until the test ends.
func usernsFd(t *testing.T, base, size int) int {
	t.Helper()
	cmd := exec.Command("cat") // held open on its stdin until cleanup
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: size}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: size}},
	}
	stdin, err := cmd.StdinPipe()
	must(t, err)
	must(t, cmd.Start())
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	fd, err := unix.Open("/proc/"+strconv.Itoa(cmd.Process.Pid)+"/ns/user", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// idmapBind attaches an idmapped clone of the mount at src to a new
// directory, as containerd does with a bind mount's uidmap= option, and
// detaches it when the test ends.
func idmapBind(t *testing.T, src string, userns int) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "idmapped")
	must(t, os.Mkdir(dst, 0o755))
	tree, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	must(t, err)
	defer unix.Close(tree)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns)}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		t.Fatalf("idmap the overlay: %v", err)
	}
	must(t, unix.MoveMount(tree, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH))
	t.Cleanup(func() {
		if err := unix.Unmount(dst, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount idmapped bind: %v", err)
		}
	})
	return dst
}

func wantOwner(t *testing.T, path string, uid, gid uint32) {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(path, &st))
	if st.Uid != uid || st.Gid != gid {
		t.Errorf("%s: owner %d:%d, want %d:%d", path, st.Uid, st.Gid, uid, gid)
	}
}

// TestIDMapped serves an overlay for an idmapped mount: image files (lower,
// container ids) show mapped through it, and what the container creates,
// copies up or chowns lands in the upper layer with host ids, no layer
// chowned.
func TestIDMapped(t *testing.T) {
	const base, size = 200000, 65536
	lowers, upper, work := newLayers(t, 1)
	writeFile(t, filepath.Join(lowers[0], "etc", "passwd"), "root\n", 0o644)
	writeFile(t, filepath.Join(lowers[0], "home", "user", "f"), "u\n", 0o644)
	must(t, os.Lchown(filepath.Join(lowers[0], "home", "user"), 1000, 1000))
	must(t, os.Lchown(filepath.Join(lowers[0], "home", "user", "f"), 1000, 1000))
	// The snapshotter gives the upper root the mapped root, as
	// containerd's overlayfs snapshotter does.
	must(t, os.Lchown(upper, base, base))
	ids := []IDMapping{{ContainerID: 0, HostID: base, Size: size}}
	m := mountLayers(t, lowers, upper, work, Options{UIDMap: ids, GIDMap: ids})
	c := idmapBind(t, m.dir, usernsFd(t, base, size))

	// The overlay itself shows container ids, the idmapped mount host ids.
	wantOwner(t, m.path("."), 0, 0)
	wantOwner(t, m.path("etc/passwd"), 0, 0)
	wantOwner(t, filepath.Join(c, "."), base, base)
	wantOwner(t, filepath.Join(c, "etc/passwd"), base, base)
	wantOwner(t, filepath.Join(c, "home/user/f"), base+1000, base+1000)

	// The container's root (host base) creates, and appends to an image
	// file: a copy-up.
	done := make(chan error, 1)
	go func() {
		done <- asUser(base, base, 0o022, func() error {
			if err := os.Mkdir(filepath.Join(c, "new"), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(c, "new", "f"), []byte("x"), 0o644); err != nil {
				return err
			}
			f, err := os.OpenFile(filepath.Join(c, "etc/passwd"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			_, err = f.WriteString("more\n")
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			return err
		})
	}()
	must(t, <-done)
	// A chown inside to the container's uid 1000 (host root may: it
	// holds CAP_CHOWN over the mapped ids).
	must(t, os.Lchown(filepath.Join(c, "new", "f"), base+1000, base+1000))

	for _, p := range []string{"new", "etc", "etc/passwd"} {
		wantOwner(t, filepath.Join(upper, p), base, base)
		wantOwner(t, filepath.Join(c, p), base, base)
		wantOwner(t, m.path(p), 0, 0)
	}
	wantOwner(t, filepath.Join(upper, "new/f"), base+1000, base+1000)
	wantOwner(t, filepath.Join(c, "new/f"), base+1000, base+1000)
	wantOwner(t, m.path("new/f"), 1000, 1000)
	// No layer was chowned.
	wantOwner(t, filepath.Join(lowers[0], "etc/passwd"), 0, 0)
	wantOwner(t, filepath.Join(lowers[0], "home/user/f"), 1000, 1000)

	// An upper owner outside the mapping is no one's inside.
	must(t, os.WriteFile(filepath.Join(upper, "host"), []byte("h"), 0o644))
	must(t, os.Lchown(filepath.Join(upper, "host"), 0, 0))
	wantOwner(t, m.path("host"), unmappedID, unmappedID)
	wantOwner(t, filepath.Join(c, "host"), 65534, 65534)

	// An id the mapping cannot give is refused.
	wantErrno(t, os.Lchown(m.path("new/f"), size+5, -1), unix.EOVERFLOW, "chown beyond the mapping")
}

func TestIDMapOptions(t *testing.T) {
	ids := []IDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	for _, o := range []Options{
		{UIDMap: ids},
		{GIDMap: ids},
		{UIDMap: []IDMapping{{0, 1, 0}}, GIDMap: ids},
		{UIDMap: ids, GIDMap: []IDMapping{{0, 0xffff0000, 0x10000}}},
	} {
		if err := o.Validate(); err == nil {
			t.Errorf("Validate(%+v): no error", o)
		}
	}
	o := Options{UIDMap: ids, GIDMap: ids}
	if err := o.Validate(); err != nil {
		t.Errorf("Validate(%+v): %v", o, err)
	}
}
