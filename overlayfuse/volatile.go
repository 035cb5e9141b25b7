package overlayfuse

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// A volatile mount never syncs the upper filesystem, so after a crash the
// upper dir may be inconsistent. Kernel overlayfs marks such a work dir
// with <work>/work/incompat/volatile/dirty and refuses to mount a work dir
// with anything in work/incompat; we write and honour the same mark. Unlike
// the kernel, a clean end of our mount syncs the upper filesystem and
// removes the mark, since the upper is then whole.

const incompatDir = "incompat"

// checkIncompat refuses a work dir that a volatile mount did not end
// cleanly, before anything in it is emptied.
func checkIncompat(work string, workFd int) error {
	var st unix.Stat_t
	if lstatAt(workFd, incompatDir, &st) != nil {
		return nil
	}
	return fmt.Errorf("workdir %s: a volatile mount of this upper dir did not end cleanly "+
		"(%s/%s/%s exists), so the upper dir may be inconsistent: use fresh upper and work dirs, "+
		"or remove %[2]s/%[3]s/%[4]s if you know the machine did not crash: %w",
		work, work, workSubdir, incompatDir, unix.EINVAL)
}

// markVolatile makes the kernel's mark of a volatile mount in the
// (emptied) work dir.
func markVolatile(workFd int) error {
	dir := workFd
	for _, name := range []string{incompatDir, "volatile"} {
		if err := unix.Mkdirat(dir, name, 0o700); err != nil && err != unix.EEXIST {
			return err
		}
		fd, err := openBeneath(dir, name, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		if dir != workFd {
			unix.Close(dir)
		}
		dir = fd
	}
	defer unix.Close(dir)
	fd, err := unix.Openat(dir, "dirty", unix.O_CREAT|unix.O_EXCL|unix.O_RDONLY|unix.O_CLOEXEC, 0o600)
	if err != nil && err != unix.EEXIST {
		return err
	}
	if err == nil {
		unix.Close(fd)
	}
	return nil
}

// endVolatile ends a volatile mount cleanly: the upper filesystem is
// synced, then the mark goes. A failed sync keeps the mark.
func (ofs *overlayFS) endVolatile() {
	if !ofs.opts.Volatile || ofs.workFd < 0 || ofs.upper == nil {
		return
	}
	if err := unix.Syncfs(ofs.upper.fd); err != nil {
		ofs.opts.Logger.Printf("overlayfuse: volatile mount: sync of upperdir %s: %v; its work dir keeps the volatile mark", ofs.upper.path, err)
		return
	}
	if err := removeAt(ofs.workFd, incompatDir, true); err != nil {
		ofs.opts.Logger.Printf("overlayfuse: volatile mount: removing the volatile mark of %s: %v; the next mount of this upper will refuse", ofs.upper.path, err)
	}
}
