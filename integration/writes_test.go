package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/integration/harness"
	"github.com/overlayfuse/overlayfuse/integration/image"
)

// startSleeper runs a detached container of the cases image that sleeps, and
// returns its id; t.Cleanup kills and removes it.
func startSleeper(t *testing.T, e *harness.Env, prefix string) string {
	t.Helper()
	c := id(prefix)
	mustCtr(t, e, "run", "-d", "--snapshotter", snapshotter, image.CasesName, c, "sleep", "600")
	t.Cleanup(func() { removeContainer(t, e, c) })
	return c
}

func removeContainer(t *testing.T, e *harness.Env, c string) {
	_, _ = e.Ctr("tasks", "kill", "-a", "-s", "SIGKILL", c)
	_, _ = e.Ctr("tasks", "rm", "-f", c)
	if out, err := e.Ctr("containers", "ls", "-q", "id=="+c); err == nil && strings.TrimSpace(out) != "" {
		if _, err := e.Ctr("containers", "rm", c); err != nil {
			t.Errorf("remove container %s: %v", c, err)
		}
	}
}

func execIn(t *testing.T, e *harness.Env, c, script string) string {
	t.Helper()
	return mustCtr(t, e, "tasks", "exec", "--exec-id", id("x"), c, "/bin/sh", "-c", script)
}

// upperWith returns the snapshot fs dirs that hold rel.
func upperWith(t *testing.T, e *harness.Env, rel string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(e.SnapshotsDir(snapshotter), "*", "fs", rel))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Writes land in the container's own upper dir, lower layers stay intact, and
// two containers of one image never see each other's writes.
func TestWritesIsolated(t *testing.T) {
	e := newEnv(t)
	importCases(t, e)
	a, b := startSleeper(t, e, "wa"), startSleeper(t, e, "wb")

	execIn(t, e, a, "echo one > /marker-a && echo changed >> /data/keep.txt && rm /data/sym && mkdir /data/newdir && echo n > /data/newdir/f")
	execIn(t, e, b, "echo two > /marker-b && chmod 0600 /data/keep.txt")

	sameLines(t, "container a", execIn(t, e, a,
		"cat /marker-a; test -e /marker-b && echo sees-b; cat /data/keep.txt; test -L /data/sym || echo sym-gone; cat /data/newdir/f; stat -c %a /data/keep.txt"),
		"one\nkeepchanged\nsym-gone\nn\n644\n")
	sameLines(t, "container b", execIn(t, e, b,
		"cat /marker-b; test -e /marker-a && echo sees-a; cat /data/keep.txt; echo; readlink /data/sym; test -e /data/newdir || echo no-newdir; stat -c %a /data/keep.txt"),
		"two\nkeep\nkeep.txt\nno-newdir\n600\n")

	// Each marker is in exactly one upper dir, and a's copy-up is there too.
	ua, ub := upperWith(t, e, "marker-a"), upperWith(t, e, "marker-b")
	if len(ua) != 1 || len(ub) != 1 {
		t.Fatalf("marker-a in %v, marker-b in %v: want one upper dir each", ua, ub)
	}
	upperA := filepath.Dir(ua[0])
	if upperA == filepath.Dir(ub[0]) {
		t.Fatalf("both containers write to %s", upperA)
	}
	if data, err := os.ReadFile(filepath.Join(upperA, "data/keep.txt")); err != nil || string(data) != "keepchanged\n" {
		t.Errorf("copied-up keep.txt in a's upper dir: %q, %v", data, err)
	}
	// A whiteout in kernel overlayfs format: a 0/0 character device.
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(upperA, "data/sym"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("a's upper dir lacks a 0/0 whiteout for data/sym: mode %o rdev %d, %v", st.Mode, st.Rdev, err)
	}
	// Every other copy of keep.txt (the image layer, b's copy-up) is intact.
	for _, p := range upperWith(t, e, "data/keep.txt") {
		if strings.HasPrefix(p, upperA+"/") {
			continue
		}
		if data, err := os.ReadFile(p); err != nil || string(data) != "keep" {
			t.Errorf("%s: %q, %v: want the image's \"keep\"", p, data, err)
		}
	}

	// A new container of the image sees the image, not the writes.
	out := mustCtr(t, e, "run", "--rm", "--snapshotter", snapshotter, image.CasesName, id("fresh"), "/bin/sh", "-c", image.CheckScript)
	sameLines(t, "fresh container", out, image.CasesExpected)
}
