package overlayfuse

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"golang.org/x/sys/unix"
)

// mountServedNoFile is mountServed with the server's RLIMIT_NOFILE at
// nofile, soft and hard.
func mountServedNoFile(t *testing.T, lowers []string, upper, work string, opts Options, nofile uint64) *testMount {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "merged")
	must(t, os.Mkdir(dir, 0o755))
	mountInChild(t, serveSpec{Dir: dir, Layers: Layers{Lower: lowers, Upper: upper, Work: work}, Opts: opts, NoFile: nofile})
	return &testMount{dir: dir, upper: upper, work: work, lowers: lowers}
}

// exerciseTree stats every entry below root, lists every directory, reads
// every third file and creates a file in every other directory.
func exerciseTree(root, newName string) (dirs int, err error) {
	files := 0
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("lstat %s: %w", p, err)
		}
		if d.IsDir() {
			dirs++
			if dirs%2 == 0 {
				if err := os.WriteFile(filepath.Join(p, newName), []byte(p), 0o644); err != nil {
					return err
				}
			}
			return nil
		}
		if files++; files%3 == 0 && st.Mode&unix.S_IFMT == unix.S_IFREG {
			if _, err := os.ReadFile(p); err != nil {
				return err
			}
		}
		return nil
	})
	return dirs, err
}

// TestLowFileLimit: a server whose RLIMIT_NOFILE is 64 serves a tree of
// hundreds of directories, walked twice (the second time by four walkers
// at once), without EMFILE, and keeps serving afterwards.
func TestLowFileLimit(t *testing.T) {
	lowers, upper, work := newLayers(t, 2)
	for i := 0; i < 20; i++ {
		for j := 0; j < 15; j++ {
			d := filepath.Join(lowers[0], fmt.Sprintf("d%02d/s%02d", i, j))
			writeFile(t, filepath.Join(d, "a"), "a", 0o644)
			writeFile(t, filepath.Join(d, "b"), "b", 0o644)
			if i < 10 && j < 5 {
				// Merged with the layer below.
				writeFile(t, filepath.Join(lowers[1], fmt.Sprintf("d%02d/s%02d/c", i, j)), "c", 0o644)
			}
		}
	}
	m := mountServedNoFile(t, lowers, upper, work, Options{}, 64)

	dirs, err := exerciseTree(m.dir, "new1")
	if err != nil {
		t.Fatalf("first walk: %v", err)
	}
	if dirs != 1+20+20*15 {
		t.Fatalf("first walk saw %d directories, want %d", dirs, 1+20+20*15)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 20; i += 4 {
				if _, err := exerciseTree(m.path(fmt.Sprintf("d%02d", i)), "new2"); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("second walk: %v", err)
	}

	// Fresh work after the walks.
	must(t, os.MkdirAll(m.path("fresh/x/y"), 0o755))
	writeFile(t, m.path("fresh/x/y/f"), "fresh", 0o644)
	must(t, os.Rename(m.path("d19/s14"), m.path("fresh/moved")))
	if got := testutil.ReadFile(t, m.path("fresh/moved/a")); got != "a" {
		t.Fatalf("moved/a = %q", got)
	}
	if got := testutil.ReadFile(t, m.path("d00/s00/c")); got != "c" {
		t.Fatalf("d00/s00/c = %q", got)
	}
	ents, err := os.ReadDir(m.path("d03/s02"))
	must(t, err)
	seen := map[string]bool{}
	for _, e := range ents {
		seen[e.Name()] = true
	}
	if !seen["a"] || !seen["b"] || !seen["c"] {
		t.Fatalf("d03/s02 lists %v", seen)
	}
	must(t, os.Remove(m.path("d00/s00/a")))
	if _, err := os.Lstat(m.path("d00/s00/a")); !os.IsNotExist(err) {
		t.Fatalf("removed file: %v", err)
	}
}

// TestFdCacheBounds: the cache keeps at most its budget of idle fds,
// closing the least recently used, lets pinned ones exceed it, and opens
// evicted and dropped entries again by handle.
func TestFdCacheBounds(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	l, err := openLayer(dir, true)
	must(t, err)
	t.Cleanup(l.close)
	if !l.handles {
		t.Fatalf("%s: no file handles", dir)
	}
	const budget = 4
	c := newFdCache(budget)
	var ents []*cachedFd
	for i := 0; i < 12; i++ {
		name := fmt.Sprintf("d%d", i)
		must(t, unix.Mkdirat(l.fd, name, 0o755))
		fd, err := openPath(l.fd, name)
		must(t, err)
		fh, _, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
		must(t, err)
		ents = append(ents, c.add(l, fh, fd))
		if c.open > budget {
			t.Fatalf("%d fds open after %d adds, budget %d", c.open, i+1, budget)
		}
	}
	if ents[0].fd >= 0 || ents[11].fd < 0 {
		t.Fatalf("the oldest entry is open (%d) or the newest closed (%d)", ents[0].fd, ents[11].fd)
	}
	acquire := func(i int) func() {
		t.Helper()
		fd, done, err := ents[i].acquire()
		must(t, err)
		var st, want unix.Stat_t
		must(t, fstat(fd, &st))
		must(t, unix.Lstat(filepath.Join(dir, fmt.Sprintf("d%d", i)), &want))
		if st.Ino != want.Ino {
			t.Fatalf("entry %d opens inode %d, want %d", i, st.Ino, want.Ino)
		}
		return done
	}
	for i := range ents {
		acquire(i)()
		if c.open > budget {
			t.Fatalf("%d fds open, budget %d", c.open, budget)
		}
	}
	var dones []func()
	for i := 0; i < budget+2; i++ {
		dones = append(dones, acquire(i))
	}
	if c.open != budget+2 {
		t.Fatalf("%d fds open with %d pinned", c.open, budget+2)
	}
	for _, done := range dones {
		done()
	}
	if c.open != budget {
		t.Fatalf("%d fds open after release, budget %d", c.open, budget)
	}
	for _, e := range ents {
		e.drop()
	}
	if c.open != 0 {
		t.Fatalf("%d fds open after dropping every entry", c.open)
	}
	acquire(3)()
	if c.open != 1 {
		t.Fatalf("%d fds open, want 1", c.open)
	}
}

// TestMountInUpper: a directory on another filesystem mounted inside the
// upper layer cannot be opened by handle through the layer's mount; it is
// served all the same. (Files there are not: they are always opened by
// handle.)
func TestMountInUpper(t *testing.T) {
	testutil.RequireRoot(t)
	lowers, upper, work := newLayers(t, 1)
	writeFile(t, filepath.Join(lowers[0], "mnt/lower"), "l", 0o644)
	must(t, os.Mkdir(filepath.Join(upper, "mnt"), 0o755))
	must(t, unix.Mount("tmpfs", filepath.Join(upper, "mnt"), "tmpfs", 0, ""))
	t.Cleanup(func() { _ = unix.Unmount(filepath.Join(upper, "mnt"), unix.MNT_DETACH) })
	must(t, os.MkdirAll(filepath.Join(upper, "mnt/sub/deeper"), 0o755))
	m := mountLayers(t, lowers, upper, work, Options{})
	for _, d := range []string{"mnt", "mnt/sub"} {
		ents, err := os.ReadDir(m.path(d))
		if err != nil || len(ents) == 0 {
			t.Fatalf("%s lists %v, %v", d, ents, err)
		}
	}
	must(t, os.Mkdir(m.path("mnt/sub/deeper/new"), 0o755))
	if _, err := os.ReadDir(m.path("mnt/sub/deeper/new")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(upper, "mnt/sub/deeper/new")); err != nil {
		t.Fatal(err)
	}
}
