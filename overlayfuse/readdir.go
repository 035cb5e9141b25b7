package overlayfuse

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

type dirent struct {
	name string
	typ  uint8
	ino  uint64
}

// readNames lists directory fd (opened O_RDONLY) without "." and "..".
func readNames(fd int) ([]dirent, error) {
	var out []dirent
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return out, nil
		}
		for b := buf[:n]; len(b) > 0; {
			d := (*unix.Dirent)(unsafe.Pointer(&b[0]))
			rec := b[:d.Reclen]
			b = b[d.Reclen:]
			nameb := rec[unsafe.Offsetof(d.Name):]
			for i, c := range nameb {
				if c == 0 {
					nameb = nameb[:i]
					break
				}
			}
			name := string(nameb)
			if name == "." || name == ".." {
				continue
			}
			out = append(out, dirent{name: name, typ: d.Type, ino: d.Ino})
		}
	}
}

var dtToMode = map[uint8]uint32{
	unix.DT_REG: syscall.S_IFREG, unix.DT_DIR: syscall.S_IFDIR, unix.DT_LNK: syscall.S_IFLNK,
	unix.DT_CHR: syscall.S_IFCHR, unix.DT_BLK: syscall.S_IFBLK, unix.DT_FIFO: syscall.S_IFIFO,
	unix.DT_SOCK: syscall.S_IFSOCK,
}

// mergedEntries lists directory n as the overlay shows it: upper first,
// then each lower layer; the first layer holding a name wins, and
// whiteouts hide the name in every layer below.
func (n *node) mergedEntries() ([]fuse.DirEntry, syscall.Errno) {
	n.mu.Lock()
	upper, lowers := n.upper, n.lowers
	n.mu.Unlock()
	return n.ofs.listMerged(upper, lowers)
}

// listMerged is mergedEntries over explicit layer directories.
func (ofs *overlayFS) listMerged(upper realRef, lowers []realRef) ([]fuse.DirEntry, syscall.Errno) {
	srcs := lowers
	if upper.valid() {
		srcs = append([]realRef{upper}, lowers...)
	}

	seen := map[string]struct{}{}
	var out []fuse.DirEntry
	for i, s := range srcs {
		dfd, err := s.open(unix.O_RDONLY | unix.O_DIRECTORY)
		if err != nil {
			return nil, ofs.toErrno(err)
		}
		names, err := readNames(dfd)
		if err == nil {
			for _, d := range names {
				if _, ok := seen[d.name]; ok {
					continue
				}
				if len(srcs) > 1 {
					seen[d.name] = struct{}{}
				}
				typ := d.typ
				if typ == unix.DT_CHR || typ == unix.DT_UNKNOWN {
					var st unix.Stat_t
					if lstatAt(dfd, d.name, &st) != nil || isWhiteout(&st) {
						continue
					}
					typ = uint8(st.Mode & unix.S_IFMT >> 12)
				}
				ino := ofs.ino(s.layer.dev, d.ino)
				if i == 0 && s.layer.upper {
					var st unix.Stat_t
					st.Dev, st.Ino = s.layer.dev, d.ino
					ino = ofs.upperIno(dfd, d.name, &st)
				}
				out = append(out, fuse.DirEntry{Name: d.name, Mode: dtToMode[typ], Ino: ino})
			}
		}
		unix.Close(dfd)
		if err != nil {
			return nil, ofs.toErrno(err)
		}
	}
	return out, 0
}

// isEmptyDir reports whether directory n shows no entry.
func (n *node) isEmptyDir() (bool, syscall.Errno) {
	ents, errno := n.mergedEntries()
	return len(ents) == 0, errno
}

var _ fs.NodeOpendirHandler = (*node)(nil)

// OpendirHandle asks the kernel to cache the listing: it changes only
// through this mount, and the kernel drops the cache itself then.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return &dirHandle{n: n}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// dirHandle serves one open directory from a listing made at first read.
// Its entries are ordered by cookie, and each entry's offset is its
// cookie: with FOPEN_CACHE_DIR the kernel continues a listing cached from
// one handle's replies with another handle, at an offset the first one
// gave, so an offset must mean the same place in every handle's listing.
type dirHandle struct {
	n       *node
	mu      sync.Mutex
	entries []fuse.DirEntry
	loaded  bool
	pos     int
}

var (
	_ fs.FileReaddirenter = (*dirHandle)(nil)
	_ fs.FileSeekdirer    = (*dirHandle)(nil)
	_ fs.FileFsyncdirer   = (*dirHandle)(nil)
	_ fs.FileLookuper     = (*dirHandle)(nil)
)

func (d *dirHandle) load() syscall.Errno {
	if d.loaded {
		return 0
	}
	ents, errno := d.n.mergedEntries()
	if errno != 0 {
		return errno
	}
	numberEntries(d.n.ofs.cookieKey, ents)
	self := d.n.ino
	parentIno := self
	if _, p := d.n.Parent(); p != nil {
		if pn, ok := p.Operations().(*node); ok {
			parentIno = pn.ino
		}
	}
	d.entries = append([]fuse.DirEntry{
		{Name: ".", Mode: syscall.S_IFDIR, Ino: self, Off: 1},
		{Name: "..", Mode: syscall.S_IFDIR, Ino: parentIno, Off: 2},
	}, ents...)
	d.loaded = true
	return 0
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if errno := d.load(); errno != 0 {
		return nil, errno
	}
	if d.pos >= len(d.entries) {
		return nil, 0
	}
	e := d.entries[d.pos]
	d.pos++
	return &e, 0
}

// Seekdir goes to the first entry after cookie off. go-fuse calls it
// whenever a read asks for another offset than where the handle stands,
// also on a fresh handle that continues another one's cached listing.
func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off == 0 {
		// rewinddir: list again.
		d.loaded = false
		d.entries = nil
		d.pos = 0
		return 0
	}
	if errno := d.load(); errno != 0 {
		return errno
	}
	d.pos, _ = slices.BinarySearchFunc(d.entries, off+1, func(e fuse.DirEntry, t uint64) int {
		return cmp.Compare(e.Off, t)
	})
	return 0
}

// firstCookie follows those of "." (1) and ".." (2).
const firstCookie = 3

// numberEntries sets each entry's Off to its name's cookie, a keyed hash
// of the name, and sorts ents by it. A name has the same cookie in every
// listing, also after it was deleted and made again, so no listing
// stitched from several handles' replies, before and after changes, can
// hold a name twice, and no table of names is kept. Two names whose
// hashes collide (about one in 2^62) take consecutive cookies.
//
// key is the mount's (stateHeader.cookieKey): secret, so that no layer can
// be made to hold names whose cookies collide, and the same for every
// server of the mount.
func numberEntries(key [2]uint64, ents []fuse.DirEntry) {
	for i := range ents {
		ents[i].Off = sipHash24(key, ents[i].Name)>>2 + firstCookie
	}
	slices.SortFunc(ents, func(a, b fuse.DirEntry) int {
		if c := cmp.Compare(a.Off, b.Off); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	for i := 1; i < len(ents); i++ {
		if ents[i].Off <= ents[i-1].Off {
			ents[i].Off = ents[i-1].Off + 1
		}
	}
}

func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	up := d.n.upperRef()
	if !up.valid() || d.n.ofs.opts.Volatile {
		return 0
	}
	dfd, err := up.open(unix.O_RDONLY | unix.O_DIRECTORY)
	if err != nil {
		return d.n.ofs.toErrno(err)
	}
	defer unix.Close(dfd)
	return d.n.ofs.toErrno(unix.Fsync(dfd))
}

// Lookup looks up an entry of a READDIRPLUS reply. The bridge gives the
// kernel the node it returns, so the state file counts it here, as
// requestFS does for the other replies that give out nodes.
func (d *dirHandle) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch, errno := d.n.Lookup(ctx, name, out)
	if errno == 0 {
		if c, ok := ch.Operations().(*node); ok {
			a := ch.StableAttr()
			d.n.ofs.state.entered(a.Ino, c.ino, a.Gen, d.n.StableAttr().Ino, name)
		}
	}
	return ch, errno
}
