//go:build linux

package differ

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/containerd/continuity/fs"
	"golang.org/x/sys/unix"
)

// upperChanges reports to fn the changes an overlayfs upper dir, the
// root directory of the calling thread (inRoot), makes to base, the
// merged tree below it (nil: nothing). It reports what continuity's
// walking comparison (fs.Changes) reports for the two merged trees, so
// the layer is the walking differ's, file for file, but walks only the
// upper dir:
//   - a whiteout (0/0 character device) over a name in base is a delete;
//   - an entry also in base that is the same file (mode, owner, device,
//     file capability; for non-directories also size and mtime, and the
//     bytes where both mtimes are whole seconds) is skipped, or reported
//     unmodified if it has other hard links, so the tar links them;
//   - in an opaque directory, and below it, every name of base that the
//     upper dir lacks is a delete.
//
// Base is read through its fd, never following a symlink, and the upper
// dir through the thread's root, so neither can lead outside its tree.
func upperChanges(ctx context.Context, base *os.File, fn fs.ChangeFunc) error {
	var (
		opaque []string // directories whose base entries are hidden, innermost last
		absent string   // a directory base has no directory at: nothing below needs a lookup
	)
	return filepath.Walk("/", func(p string, f os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == "/" {
			return nil
		}
		for len(opaque) > 0 && !strings.HasPrefix(p, opaque[len(opaque)-1]+"/") {
			opaque = opaque[:len(opaque)-1]
		}
		if absent != "" && !strings.HasPrefix(p, absent+"/") {
			absent = ""
		}
		var b *baseEntry
		if absent == "" {
			if b, err = lookupBase(base, p); err != nil {
				return err
			}
			defer b.close()
			if f.IsDir() && (b == nil || !b.isDir()) {
				absent = p
			}
		}

		if isWhiteout(f) {
			if b == nil {
				return nil // hides nothing
			}
			return fn(fs.ChangeKindDelete, p, nil, nil)
		}
		if b == nil {
			return fn(fs.ChangeKindAdd, p, f, nil)
		}
		var kind fs.ChangeKind = fs.ChangeKindModify
		same, err := b.sameAs(p, f)
		if err != nil {
			return err
		}
		if same {
			kind = fs.ChangeKindUnmodified
		}
		if kind == fs.ChangeKindModify || isLinked(f) {
			if err := fn(kind, p, f, nil); err != nil {
				return err
			}
		}
		if !f.IsDir() || !b.isDir() {
			return nil
		}
		if len(opaque) == 0 {
			op, err := isOpaque(p)
			if err != nil || !op {
				return err
			}
		}
		// Base's entries here are hidden: those the upper dir lacks are gone.
		opaque = append(opaque, p)
		return deleteHidden(p, b, fn)
	})
}

// deleteHidden reports a delete for every entry of base directory b that
// the upper directory p lacks, in name order as a walk would.
func deleteHidden(p string, b *baseEntry, fn fs.ChangeFunc) error {
	names, err := b.f.Readdirnames(-1)
	if err != nil {
		return err
	}
	slices.Sort(names)
	for _, name := range names {
		child := filepath.Join(p, name)
		if _, err := os.Lstat(child); err == nil {
			continue
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err := fn(fs.ChangeKindDelete, child, nil, nil); err != nil {
			return err
		}
	}
	return nil
}

// baseEntry is an entry of the base tree, open through its fd.
type baseEntry struct {
	f  *os.File
	st unix.Stat_t
}

// lookupBase opens path p of base without following any symlink, and
// answers nil when base has no such entry (or reaches it only through a
// symlink, which a walk of base would not follow either).
func lookupBase(base *os.File, p string) (*baseEntry, error) {
	if base == nil {
		return nil, nil
	}
	rel := strings.TrimPrefix(p, "/")
	how := unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	fd, err := unix.Openat2(int(base.Fd()), rel, &how)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			return nil, nil
		}
		return nil, &os.PathError{Op: "openat2", Path: rel, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fstat", Path: rel, Err: err}
	}
	// Contents, listings and xattrs need a real open: only of regular
	// files and directories, which an open cannot block on.
	if t := st.Mode & unix.S_IFMT; t == unix.S_IFREG || t == unix.S_IFDIR {
		how.Flags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		rfd, err := unix.Openat2(int(base.Fd()), rel, &how)
		unix.Close(fd)
		if err != nil {
			return nil, &os.PathError{Op: "openat2", Path: rel, Err: err}
		}
		fd = rfd
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return nil, &os.PathError{Op: "fstat", Path: rel, Err: err}
		}
	}
	return &baseEntry{f: os.NewFile(uintptr(fd), rel), st: st}, nil
}

func (b *baseEntry) close() {
	if b != nil {
		b.f.Close()
	}
}

func (b *baseEntry) isDir() bool { return b.st.Mode&unix.S_IFMT == unix.S_IFDIR }

// sameAs is continuity's sameFile (fs.Changes) for base entry b and the
// upper entry p, f.
func (b *baseEntry) sameAs(p string, f os.FileInfo) (bool, error) {
	st, ok := f.Sys().(*syscall.Stat_t)
	if !ok {
		return false, nil
	}
	if st.Mode != b.st.Mode || st.Uid != b.st.Uid || st.Gid != b.st.Gid || st.Rdev != b.st.Rdev {
		return false, nil
	}
	if eq, err := b.sameCapability(p); err != nil || !eq {
		return eq, err
	}
	if f.IsDir() {
		return true, nil
	}
	if f.Size() != b.st.Size {
		return false, nil
	}
	bm := b.st.Mtim
	um := f.ModTime()
	if um.Unix() != bm.Sec {
		return false, nil
	}
	if um.Nanosecond() != 0 || bm.Nsec != 0 {
		return int64(um.Nanosecond()) == bm.Nsec, nil
	}
	// Whole-second times may have been truncated (a tar): compare bytes.
	switch {
	case f.Mode()&os.ModeSymlink != 0:
		l1, err := os.Readlink(p)
		if err != nil {
			return false, err
		}
		l2, err := readlinkFd(b.f)
		return l1 == l2, err
	case f.Mode().IsRegular():
		return sameContent(p, b.f)
	}
	return true, nil
}

func (b *baseEntry) sameCapability(p string) (bool, error) {
	c1, err := getxattr(func(buf []byte) (int, error) { return unix.Lgetxattr(p, capabilityXattr, buf) })
	if err != nil {
		return false, err
	}
	var c2 []byte
	if t := b.st.Mode & unix.S_IFMT; t == unix.S_IFREG || t == unix.S_IFDIR {
		fd := int(b.f.Fd())
		if c2, err = getxattr(func(buf []byte) (int, error) { return unix.Fgetxattr(fd, capabilityXattr, buf) }); err != nil {
			return false, err
		}
	}
	return bytes.Equal(c1, c2), nil
}

const capabilityXattr = "security.capability"

// getxattr reads one xattr with get; missing is nil.
func getxattr(get func([]byte) (int, error)) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := get(buf)
		switch {
		case errors.Is(err, unix.ERANGE):
			buf = make([]byte, 2*len(buf))
			continue
		case errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP):
			return nil, nil
		case err != nil:
			return nil, err
		}
		return buf[:n], nil
	}
}

func readlinkFd(f *os.File) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(int(f.Fd()), "", buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func sameContent(p string, base *os.File) (bool, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	b1 := make([]byte, 32*1024)
	b2 := make([]byte, 32*1024)
	var off int64
	for {
		n1, err1 := io.ReadFull(f, b1)
		n2, err2 := io.ReadFull(io.NewSectionReader(base, off, int64(len(b2))), b2)
		off += int64(n2)
		if n1 != n2 || !bytes.Equal(b1[:n1], b2[:n2]) {
			return false, nil
		}
		end1 := errors.Is(err1, io.EOF) || errors.Is(err1, io.ErrUnexpectedEOF)
		end2 := errors.Is(err2, io.EOF) || errors.Is(err2, io.ErrUnexpectedEOF)
		switch {
		case err1 != nil && !end1:
			return false, err1
		case err2 != nil && !end2:
			return false, err2
		case end1 || end2:
			return end1 && end2, nil
		}
	}
}

// isWhiteout reports an overlayfs whiteout: a 0/0 character device.
func isWhiteout(f os.FileInfo) bool {
	if f.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	st, ok := f.Sys().(*syscall.Stat_t)
	return ok && st.Rdev == 0
}

func isLinked(f os.FileInfo) bool {
	st, ok := f.Sys().(*syscall.Stat_t)
	return ok && !f.IsDir() && st.Nlink > 1
}

// isOpaque reports an opaque directory of the upper dir.
func isOpaque(p string) (bool, error) {
	v, err := getxattr(func(buf []byte) (int, error) { return unix.Lgetxattr(p, "trusted.overlay.opaque", buf) })
	return string(v) == "y", err
}
