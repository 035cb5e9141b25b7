package overlayfuse

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFsx runs a fixed-seed random sequence of file operations, fsx style,
// on overlay files and on a plain reference file, and compares the two
// after every step. Each lower file starts as a copy of the reference; the
// first writable open copies it up, and "reopen" moves on to the next
// lower file, so the run crosses many copy-ups with a read-only fd opened
// before each of them.
func TestFsx(t *testing.T) {
	const (
		ops      = 20000
		files    = 20
		maxSize  = 64 << 10
		initSize = 16 << 10
	)
	for _, mode := range consistencyModes {
		t.Run(mode.name, func(t *testing.T) {
			rng := rand.New(rand.NewSource(20261121))
			initial := make([]byte, initSize)
			rng.Read(initial)
			lowers, upper, work := newLayers(t, 1)
			for i := 0; i < files; i++ {
				must(t, os.WriteFile(filepath.Join(lowers[0], fmt.Sprintf("f%d", i)), initial, 0o644))
			}
			// It maps the file: the server must be another process.
			m := mountServed(t, lowers, upper, work, mode.opts)
			ref := append([]byte(nil), initial...)
			x := &fsx{t: t, rng: rng, ref: ref, roSees: mode.roSeesWrites, maxSize: maxSize}
			x.open(m.path("f0"))
			defer x.close()
			next := 1
			for i := 0; i < ops; i++ {
				op := x.step()
				if op == "reopen" && next < files {
					x.close()
					// The next lower file holds the initial data; bring it
					// to the reference's state through the overlay.
					x.open(m.path(fmt.Sprintf("f%d", next)))
					next++
					must(t, unix.Ftruncate(x.rw, int64(len(x.ref))))
					_, err := unix.Pwrite(x.rw, x.ref, 0)
					must(t, err)
				}
				x.check(i, op)
			}
			for i := 0; i < files; i++ {
				if got, _ := os.ReadFile(filepath.Join(lowers[0], fmt.Sprintf("f%d", i))); !bytes.Equal(got, initial) {
					t.Fatalf("lower file f%d changed", i)
				}
			}
		})
	}
}

type fsx struct {
	t       *testing.T
	rng     *rand.Rand
	ref     []byte
	roSees  bool
	maxSize int
	// ro is opened before the copy-up that rw's open makes.
	ro, rw int
	path   string
}

func (x *fsx) open(p string) {
	var err error
	x.path = p
	x.ro, err = unix.Open(p, unix.O_RDONLY, 0)
	must(x.t, err)
	b := make([]byte, 1)
	_, _ = unix.Pread(x.ro, b, 0) // read before the copy-up
	x.rw, err = unix.Open(p, unix.O_RDWR, 0)
	must(x.t, err)
}

func (x *fsx) close() {
	unix.Close(x.ro)
	unix.Close(x.rw)
}

func (x *fsx) span() (off, n int) {
	off = x.rng.Intn(x.maxSize)
	n = 1 + x.rng.Intn(8192)
	if off+n > x.maxSize {
		n = x.maxSize - off
	}
	return off, n
}

func (x *fsx) grow(size int) {
	if size > len(x.ref) {
		x.ref = append(x.ref, make([]byte, size-len(x.ref))...)
	}
}

// step does one random operation on the overlay file and the reference.
func (x *fsx) step() string {
	t := x.t
	switch r := x.rng.Intn(100); {
	case r < 30:
		off, n := x.span()
		buf := make([]byte, n)
		x.rng.Read(buf)
		_, err := unix.Pwrite(x.rw, buf, int64(off))
		must(t, err)
		x.grow(off + n)
		copy(x.ref[off:], buf)
		return "write"
	case r < 50:
		fd := x.rw
		if x.roSees && x.rng.Intn(2) == 0 {
			fd = x.ro
		}
		off, n := x.span()
		buf := make([]byte, n)
		got, err := unix.Pread(fd, buf, int64(off))
		must(t, err)
		want := []byte{}
		if off < len(x.ref) {
			want = x.ref[off:min(off+n, len(x.ref))]
		}
		if !bytes.Equal(buf[:got], want) {
			t.Fatalf("read [%d,+%d) via fd %d: %d bytes differ from the reference's %d", off, n, fd, got, len(want))
		}
		return "read"
	case r < 60:
		size := x.rng.Intn(x.maxSize)
		must(t, unix.Ftruncate(x.rw, int64(size)))
		if size < len(x.ref) {
			x.ref = x.ref[:size]
		} else {
			x.grow(size)
		}
		return "truncate"
	case r < 70:
		off, n := x.span()
		mode := []uint32{0, unix.FALLOC_FL_KEEP_SIZE, unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, unix.FALLOC_FL_ZERO_RANGE}[x.rng.Intn(4)]
		must(t, unix.Fallocate(x.rw, mode, int64(off), int64(n)))
		end := off + n
		if mode&unix.FALLOC_FL_KEEP_SIZE == 0 {
			x.grow(end)
		}
		if mode&(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_ZERO_RANGE) != 0 {
			for i := off; i < min(end, len(x.ref)); i++ {
				x.ref[i] = 0
			}
		}
		return "fallocate"
	case r < 80:
		if len(x.ref) == 0 {
			return "mapread"
		}
		m, err := unix.Mmap(x.rw, 0, len(x.ref), unix.PROT_READ, unix.MAP_SHARED)
		must(t, err)
		if !bytes.Equal(m, x.ref) {
			t.Fatalf("MAP_SHARED read differs from the reference")
		}
		must(t, unix.Munmap(m))
		return "mapread"
	case r < 90:
		if len(x.ref) == 0 {
			return "mapwrite"
		}
		m, err := unix.Mmap(x.rw, 0, len(x.ref), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		must(t, err)
		off := x.rng.Intn(len(x.ref))
		n := min(1+x.rng.Intn(4096), len(x.ref)-off)
		buf := make([]byte, n)
		x.rng.Read(buf)
		copy(m[off:], buf)
		copy(x.ref[off:], buf)
		must(t, unix.Msync(m, unix.MS_SYNC))
		must(t, unix.Munmap(m))
		return "mapwrite"
	case r < 91:
		return "reopen"
	default:
		must(t, unix.Fsync(x.rw))
		return "fsync"
	}
}

// check compares the whole file, through a fresh fd, and its size with
// the reference.
func (x *fsx) check(i int, op string) {
	var st unix.Stat_t
	must(x.t, unix.Fstat(x.rw, &st))
	if int(st.Size) != len(x.ref) {
		x.t.Fatalf("op %d (%s): size %d, reference %d", i, op, st.Size, len(x.ref))
	}
	buf := make([]byte, len(x.ref)+1)
	n, err := unix.Pread(x.rw, buf, 0)
	must(x.t, err)
	if !bytes.Equal(buf[:n], x.ref) {
		at := 0
		for at < n && at < len(x.ref) && buf[at] == x.ref[at] {
			at++
		}
		x.t.Fatalf("op %d (%s): contents differ from the reference at byte %d", i, op, at)
	}
}
