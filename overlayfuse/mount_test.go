package overlayfuse

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
)

// TestSmoke mounts two lower layers and an upper, and checks the merge,
// a copy-up by write, a create, and a whiteout.
func TestSmoke(t *testing.T) {
	lowers, upper, work := newLayers(t, 2)
	writeFile(t, filepath.Join(lowers[1], "a"), "bottom a", 0o644)
	writeFile(t, filepath.Join(lowers[1], "b"), "bottom b", 0o644)
	writeFile(t, filepath.Join(lowers[0], "a"), "top a", 0o644)
	writeFile(t, filepath.Join(lowers[1], "d/x"), "x", 0o644)
	writeFile(t, filepath.Join(lowers[0], "d/y"), "y", 0o644)
	m := mountLayers(t, lowers, upper, work, Options{Debug: os.Getenv("OFDEBUG") != ""})

	if got := testutil.ReadFile(t, m.path("a")); got != "top a" {
		t.Errorf("a = %q, want the top layer's", got)
	}
	ents, err := os.ReadDir(m.path("d"))
	must(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "x,y" {
		t.Errorf("d lists %v, want x,y", names)
	}

	f, err := os.OpenFile(m.path("b"), os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.WriteString("+more")
	must(t, err)
	must(t, f.Close())
	if got := testutil.ReadFile(t, m.path("b")); got != "bottom b+more" {
		t.Errorf("b = %q after append", got)
	}
	if got := testutil.ReadFile(t, filepath.Join(upper, "b")); got != "bottom b+more" {
		t.Errorf("upper b = %q", got)
	}
	if got := testutil.ReadFile(t, filepath.Join(lowers[1], "b")); got != "bottom b" {
		t.Errorf("lower b changed to %q", got)
	}

	writeFile(t, m.path("d/new"), "new", 0o600)
	must(t, os.Remove(m.path("d/x")))
	if _, err := os.Stat(m.path("d/x")); !os.IsNotExist(err) {
		t.Errorf("d/x after remove: %v", err)
	}
	if !isWhiteoutPath(t, filepath.Join(upper, "d/x")) {
		t.Errorf("no whiteout for d/x in the upper dir")
	}
	var st unix.Stat_t
	must(t, unix.Stat(m.path("d/new"), &st))
	if st.Mode&0o777 != 0o600 {
		t.Errorf("d/new mode %o", st.Mode&0o777)
	}
}

// TestMountFlags: the overlay mounts suid and dev, as kernel overlayfs
// does (a container's setuid programs must work), unless told otherwise.
func TestMountFlags(t *testing.T) {
	flagsOf := func(dir string) string {
		b, err := os.ReadFile("/proc/self/mountinfo")
		must(t, err)
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 5 && f[4] == dir {
				return f[5]
			}
		}
		t.Fatalf("%s not in mountinfo", dir)
		return ""
	}
	lowers, upper, work := newLayers(t, 1)
	m := mountLayers(t, lowers, upper, work, Options{})
	if fl := flagsOf(m.dir); strings.Contains(fl, "nosuid") || strings.Contains(fl, "nodev") {
		t.Errorf("default mount flags %s", fl)
	}
	lowers2, upper2, work2 := newLayers(t, 1)
	m2 := mountLayers(t, lowers2, upper2, work2, Options{MountFlags: []string{"nosuid", "noexec"}})
	if fl := flagsOf(m2.dir); !strings.Contains(fl, "nosuid") || !strings.Contains(fl, "noexec") {
		t.Errorf("asked nosuid,noexec, got %s", fl)
	}
	if _, err := Mount(t.TempDir(), Layers{Lower: lowers}, Options{MountFlags: []string{"nosymfollow"}}); err == nil {
		t.Errorf("unknown mount flag accepted")
	}
}
