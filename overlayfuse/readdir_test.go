package overlayfuse

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// TestReaddirUnderChurn lists a directory in fresh opens while other
// goroutines create and unlink other names in it. With the kernel's
// directory cache, one listing is stitched together from replies to
// different handles: offsets must mean the same entry in each of them.
func TestReaddirUnderChurn(t *testing.T) {
	for _, pt := range []Passthrough{PassthroughAuto, PassthroughOff} {
		t.Run(string(pt), func(t *testing.T) {
			lowers, upper, work := newLayers(t, 1)
			const stable = 150
			for i := 0; i < stable; i++ {
				writeFile(t, filepath.Join(lowers[0], "d", fmt.Sprintf("stable-%03d", i)), "", 0o644)
			}
			m := mountLayers(t, lowers, upper, work, Options{Passthrough: pt})
			dir := m.path("d")

			deadline := time.Now().Add(5 * time.Second)
			var stop atomic.Bool
			var churners, readers sync.WaitGroup
			for c := 0; c < 3; c++ {
				churners.Add(1)
				go func() {
					defer churners.Done()
					for i := 0; !stop.Load(); i++ {
						p := filepath.Join(dir, fmt.Sprintf("churn-%d-%d", c, i))
						if err := os.WriteFile(p, nil, 0o644); err != nil {
							t.Error(err)
							return
						}
						if i >= 5 {
							if err := os.Remove(filepath.Join(dir, fmt.Sprintf("churn-%d-%d", c, i-5))); err != nil {
								t.Error(err)
								return
							}
						}
					}
				}()
			}
			var listings, bad atomic.Int64
			var firstBad atomic.Value
			for r := 0; r < 3; r++ {
				readers.Add(1)
				go func() {
					defer readers.Done()
					for time.Now().Before(deadline) {
						names, err := listSmallReads(dir)
						if err != nil {
							t.Error(err)
							return
						}
						listings.Add(1)
						if msg := checkListing(names, stable); msg != "" {
							bad.Add(1)
							firstBad.CompareAndSwap(nil, msg)
						}
					}
				}()
			}
			readers.Wait()
			stop.Store(true)
			churners.Wait()
			if bad.Load() > 0 {
				t.Fatalf("%d of %d listings wrong, e.g. %v", bad.Load(), listings.Load(), firstBad.Load())
			}
			t.Logf("%d listings", listings.Load())
		})
	}
}

// listSmallReads lists dir in a fresh open with small getdents calls, so
// that one listing takes several READDIR requests.
func listSmallReads(dir string) ([]string, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return getdentsNames(fd, 1024)
}

func getdentsNames(fd, bufSize int) ([]string, error) {
	var names []string
	buf := make([]byte, bufSize)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

// checkListing says what is wrong with one listing: a name twice, or a
// stable name missing.
func checkListing(names []string, stable int) string {
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			return fmt.Sprintf("%q twice in %d names", n, len(names))
		}
		seen[n] = true
	}
	for i := 0; i < stable; i++ {
		if n := fmt.Sprintf("stable-%03d", i); !seen[n] {
			return fmt.Sprintf("%q missing from %d names", n, len(names))
		}
	}
	return ""
}

// TestReaddirSeekAcrossCreate resumes a listing at a telldir offset after
// a name was created: no name comes twice, and the new one comes at most
// once.
func TestReaddirSeekAcrossCreate(t *testing.T) {
	lowers, upper, work := newLayers(t, 1)
	const stable = 100
	for i := 0; i < stable; i++ {
		writeFile(t, filepath.Join(lowers[0], "d", fmt.Sprintf("stable-%03d", i)), "", 0o644)
	}
	m := mountLayers(t, lowers, upper, work, Options{})
	dir := m.path("d")
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(fd)
	buf := make([]byte, 1024)
	n, err := unix.Getdents(fd, buf)
	must(t, err)
	_, _, first := unix.ParseDirent(buf[:n], -1, nil)
	off, err := unix.Seek(fd, 0, 1) // telldir
	must(t, err)

	// New names, and a listing in another open that the kernel may cache.
	for i := 0; i < 20; i++ {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("new-%02d", i)), "", 0o644)
	}
	if _, err := listSmallReads(dir); err != nil {
		t.Fatal(err)
	}
	fd2, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(fd2)
	for _, f := range []int{fd, fd2} {
		_, err = unix.Seek(f, off, 0) // seekdir
		must(t, err)
		rest, err := getdentsNames(f, 1024)
		must(t, err)
		if msg := checkListing(append(append([]string(nil), first...), rest...), stable); msg != "" {
			t.Fatalf("fd %d resumed at %d: %s", f, off, msg)
		}
	}
}

// BenchmarkDirCookies is the cost numbering adds to a listing of a
// 100,000-entry directory.
func BenchmarkDirCookies(b *testing.B) {
	ents := make([]fuse.DirEntry, 100000)
	for i := range ents {
		ents[i].Name = fmt.Sprintf("file-%06d", i)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		numberEntries([2]uint64{1, 2}, ents)
	}
}
