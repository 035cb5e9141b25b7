package overlayfuse

import (
	"errors"
	"maps"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
	"golang.org/x/sys/unix"
)

// replaceRace opens name read-only 5,000 times while another goroutine
// replaces it over and over with replace; no open may fail with ESTALE
// (ENOENT is allowed where replace leaves the name missing for a while).
func replaceRace(t *testing.T, p string, replace func() error, allowENOENT bool) {
	const opens = 5000
	done := make(chan struct{})
	var wg sync.WaitGroup
	var replaceErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := replace(); err != nil {
				replaceErr = err
				return
			}
		}
	}()
	stale := 0
	var other error
	for i := 0; i < opens; i++ {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		switch {
		case err == nil:
			unix.Close(fd)
		case errors.Is(err, unix.ESTALE):
			stale++
		case errors.Is(err, unix.ENOENT) && allowENOENT:
		default:
			other = err
		}
	}
	close(done)
	wg.Wait()
	if replaceErr != nil {
		t.Fatalf("replacing: %v", replaceErr)
	}
	if stale > 0 || other != nil {
		t.Fatalf("%d of %d opens failed with ESTALE; other error: %v", stale, opens, other)
	}
}

func createFile(p string) error {
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// TestOpenRenameRace is go-fuse's posixtest OpenSymlinkRace on a file:
// open(2) of a name that rename(2) replaces after the lookup opens the
// file it looked up, as on a kernel filesystem, never ESTALE.
func TestOpenRenameRace(t *testing.T) {
	for _, m := range lockModes {
		t.Run(m.name, func(t *testing.T) {
			lowers, upper, work := newLayers(t, 1)
			mnt := mountLayers(t, lowers, upper, work, m.opts)
			p, tmp := mnt.path("p"), mnt.path("tmp")
			must(t, createFile(p))
			replaceRace(t, p, func() error {
				if err := createFile(tmp); err != nil {
					return err
				}
				return unix.Rename(tmp, p)
			}, false)
		})
	}
}

// TestOpenUnlinkRace: the same with unlink and create of the name.
func TestOpenUnlinkRace(t *testing.T) {
	for _, m := range lockModes {
		t.Run(m.name, func(t *testing.T) {
			lowers, upper, work := newLayers(t, 1)
			mnt := mountLayers(t, lowers, upper, work, m.opts)
			p := mnt.path(filepath.Join("p"))
			must(t, createFile(p))
			replaceRace(t, p, func() error {
				if err := unix.Unlink(p); err != nil {
					return err
				}
				return createFile(p)
			}, true)
		})
	}
}

// posixSkips are the go-fuse posixtest cases that do not apply to this
// overlay, by name, with why.
var posixSkips = map[string]string{
	// It wants a process's read lock through a second fd to conflict
	// with its own write lock: go-fuse's loopback takes OFD locks on the
	// backing fd, but POSIX locks belong to the process; /tmp fails it too.
	"FcntlFlockLocksFile": "expects OFD semantics of F_SETLK (go-fuse loopback), not POSIX",
}

// TestPosixtest runs go-fuse's POSIX conformance cases against the mount,
// served from a child process (FdLeak counts this process's fds).
func TestPosixtest(t *testing.T) {
	names := slices.Sorted(maps.Keys(posixtest.All))
	for _, m := range []struct {
		name string
		opts Options
	}{{"default", Options{}}, {"passthrough=off", Options{Passthrough: PassthroughOff}}} {
		for _, name := range names {
			t.Run(m.name+"/"+name, func(t *testing.T) {
				if why, ok := posixSkips[name]; ok {
					t.Skip(why)
				}
				lowers, upper, work := newLayers(t, 1)
				mnt := mountServed(t, lowers, upper, work, m.opts)
				posixtest.All[name](t, mnt.dir)
			})
		}
	}
}
