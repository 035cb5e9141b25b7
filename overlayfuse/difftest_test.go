package overlayfuse_test

// Differential tests: the same operations on kernel overlayfs and on
// overlayfuse, each over its own copy of the same lower layers; after
// every step the errno/result and the merged trees must agree. At the end
// the two upper dirs are compared where it matters, and overlayfuse's
// upper is mounted again with the kernel (design.md §2's oracle) and must
// show what the overlayfuse mount showed.
//
// Set OVERLAYFUSE_DIFFTEST_SUT=kernel to run the "overlayfuse" side on
// kernel overlayfs as well: the harness then checks itself (every
// comparison against the kernel must pass; scenarios whose reference is a
// plain directory are skipped, as the kernel diverges there by design).
//
// Files: difftest_test.go (sides, mounts, the runner, the oracle),
// difftest_tree_test.go (snapshots, comparisons, the computed merged view
// for 200 layers), difftest_ops_test.go (operations),
// difftest_layers_test.go (layer contents), difftest_scenarios_test.go
// (operation sequences and the Test functions).

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

const sutEnv = "OVERLAYFUSE_DIFFTEST_SUT"

// sutIsKernel reports the harness self-check mode.
func sutIsKernel() bool { return os.Getenv(sutEnv) == "kernel" }

func sutName() string {
	if sutIsKernel() {
		return "kernel(sut)"
	}
	return "overlayfuse"
}

const (
	// The reference side: no redirects, no index, no metacopy, as
	// overlayfs' defaults on this machine and in most distributions.
	kernelOpts = "index=off,redirect_dir=off,metacopy=off,xino=off"
	// The oracle follows redirects in case overlayfuse writes them
	// (design.md §2 allows trusted.overlay.redirect for renamed dirs).
	oracleOpts = "index=off,redirect_dir=follow,metacopy=off,xino=off"
)

// unmountDir unmounts dir, lazily if it is busy; EINVAL means nothing is
// mounted there any more.
func unmountDir(t testing.TB, dir string) {
	if err := unix.Unmount(dir, 0); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		if err2 := unix.Unmount(dir, unix.MNT_DETACH); err2 != nil && err2 != unix.EINVAL {
			t.Errorf("unmount %s: %v, then MNT_DETACH: %v", dir, err, err2)
		}
	}
}

// mountKernel mounts kernel overlayfs and unmounts it in t.Cleanup. A
// lowerdir= list too long for mount(2)'s one page of options goes through
// fsconfig's lowerdir+ one layer at a time.
func mountKernel(t testing.TB, mnt string, lowers []string, upper, work, opts string) {
	t.Helper()
	mountKernelFlags(t, mnt, lowers, upper, work, opts, 0)
}

func mountKernelFlags(t testing.TB, mnt string, lowers []string, upper, work, opts string, flags uintptr) {
	t.Helper()
	data := "lowerdir=" + strings.Join(lowers, ":")
	if upper != "" {
		data += ",upperdir=" + upper + ",workdir=" + work
	}
	if opts != "" {
		data += "," + opts
	}
	var err error
	if len(data) < 4000 {
		err = unix.Mount("overlay", mnt, "overlay", flags, data)
	} else if flags == 0 {
		err = mountKernelFsconfig(mnt, lowers, upper, work, opts)
	} else {
		err = fmt.Errorf("mount flags %#x with fsconfig: not done here", flags)
	}
	if err != nil {
		t.Fatalf("mount -t overlay -o %s %s: %v", data, mnt, err)
	}
	t.Cleanup(func() { unmountDir(t, mnt) })
}

func mountKernelFsconfig(mnt string, lowers []string, upper, work, opts string) error {
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fsopen: %w", err)
	}
	defer unix.Close(fd)
	set := func(k, v string) error {
		if err := unix.FsconfigSetString(fd, k, v); err != nil {
			return fmt.Errorf("fsconfig %s=%s: %w", k, v, err)
		}
		return nil
	}
	for _, l := range lowers {
		if err := set("lowerdir+", l); err != nil {
			return err
		}
	}
	if upper != "" {
		if err := set("upperdir", upper); err != nil {
			return err
		}
		if err := set("workdir", work); err != nil {
			return err
		}
	}
	for _, kv := range strings.Split(opts, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			if err := set(k, v); err != nil {
				return err
			}
		}
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return fmt.Errorf("fsconfig create: %w", err)
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fsmount: %w", err)
	}
	defer unix.Close(mfd)
	return unix.MoveMount(mfd, "", unix.AT_FDCWD, mnt, unix.MOVE_MOUNT_F_EMPTY_PATH)
}

// mountSUT mounts the system under test: overlayfuse, or the kernel in
// self-check mode. The returned func unmounts it (idempotent); it also
// runs in t.Cleanup.
func mountSUT(t testing.TB, mnt string, lowers []string, upper, work string, opts overlayfuse.Options) (unmount func() error, passthroughDefault bool) {
	t.Helper()
	if sutIsKernel() {
		var flags uintptr
		if opts.ReadOnly {
			flags = unix.MS_RDONLY
		}
		mountKernelFlags(t, mnt, lowers, upper, work, kernelOpts, flags)
		return func() error {
			if err := unix.Unmount(mnt, 0); err != nil && err != unix.EINVAL {
				return err
			}
			return nil
		}, false
	}
	// Served by a child process: some steps map files, and a page fault
	// must never wait on a server in its own process.
	unmount, pt := overlayfuse.MountInChild(t, mnt, overlayfuse.Layers{Lower: lowers, Upper: upper, Work: work}, opts)
	return unmount, pt && opts.Consistency != overlayfuse.ConsistencyStrict
}

type sideKind int

const (
	sideKernel sideKind = iota
	sideSUT
	sidePlain
)

// side is one place the operations run: kernel overlayfs, the system
// under test, or a plain directory holding a copy of the merged lowers.
type side struct {
	name    string
	kind    sideKind
	base    string
	root    string // where operations run
	lowers  []string
	upper   string
	work    string
	unmount func() error
	// passthroughDefault: overlayfuse passes file I/O through and
	// runs in the default consistency mode.
	passthroughDefault bool
}

// roMode selects a read-only overlay.
type roMode int

const (
	roRW roMode = iota
	// roNoUpper: lower layers only.
	roNoUpper
	// roOption: an upper dir, but mounted read-only (MS_RDONLY for
	// the kernel, Options.ReadOnly for overlayfuse).
	roOption
)

// newSide builds the layers and mounts one side. prepare, if any, runs
// first on a kernel mount of the same layers and upper, so the side
// starts from an upper dir the kernel wrote.
func newSide(t *testing.T, kind sideKind, canary string, build func(*layerSet), opts overlayfuse.Options, ro roMode, prepare []step) *side {
	t.Helper()
	base := t.TempDir()
	// t.TempDir's parent is 0700; the "users" scenario's callers must
	// be able to reach the mount.
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ls := &layerSet{t: t, root: filepath.Join(base, "layers"), canary: canary}
	build(ls)
	s := &side{kind: kind, base: base, lowers: ls.lowers()}
	mk := func(names ...string) {
		for _, n := range names {
			if err := os.Mkdir(filepath.Join(base, n), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	mk("upper", "work", "mnt")
	s.upper, s.work, s.root = filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "mnt")
	if len(prepare) > 0 {
		mountKernel(t, s.root, s.lowers, s.upper, s.work, kernelOpts)
		for _, p := range prepare {
			if out, err := p.do(s.root); err != nil {
				t.Fatalf("preparing the upper dir on the kernel: %s: %s %v", p.name, out, err)
			}
		}
		unmountDir(t, s.root)
		// A fresh work dir: the kernel leaves its work/work behind.
		s.work = filepath.Join(base, "work2")
		mk("work2")
	}
	// The merged root shows the upper dir: same times on every side
	// (and for a prepared upper, on every file in it).
	if err := setTimes(s.upper, layerTime); err != nil {
		t.Fatal(err)
	}
	var flags uintptr
	switch ro {
	case roNoUpper:
		s.upper, s.work = "", ""
	case roOption:
		flags = unix.MS_RDONLY
		opts.ReadOnly = true
	}
	switch kind {
	case sideKernel:
		s.name = "kernel"
		mountKernelFlags(t, s.root, s.lowers, s.upper, s.work, kernelOpts, flags)
		s.unmount = func() error {
			if err := unix.Unmount(s.root, 0); err != nil && err != unix.EINVAL {
				return err
			}
			return nil
		}
	case sideSUT:
		s.name = sutName()
		s.unmount, s.passthroughDefault = mountSUT(t, s.root, s.lowers, s.upper, s.work, opts)
	case sidePlain:
		// A plain directory: what a normal filesystem does with the
		// same tree. cp -a copies modes, owners, times, xattrs, hard
		// links and sparse files from a kernel mount of the lowers.
		s.name = "plain dir"
		mountKernel(t, s.root, s.lowers, s.upper, s.work, kernelOpts)
		mk("plain")
		plain := filepath.Join(base, "plain")
		if out, err := exec.Command("cp", "-a", s.root+"/.", plain).CombinedOutput(); err != nil {
			t.Fatalf("cp -a %s %s: %v\n%s", s.root, plain, err, out)
		}
		unmountDir(t, s.root)
		s.root = plain
		s.unmount = func() error { return nil }
	}
	return s
}

// rawLowers snapshots each lower layer as it is on disk.
func rawLowers(t *testing.T, lowers []string) []tree {
	var out []tree
	for _, l := range lowers {
		tr, probs := snapshot(l, false)
		if len(probs) > 0 {
			t.Fatalf("reading lower layer %s: %v", l, probs)
		}
		out = append(out, tr)
	}
	return out
}

// report prints differences, at most limit of them, under a heading.
func report(t *testing.T, heading string, diffs []string) {
	t.Helper()
	if len(diffs) == 0 {
		return
	}
	const limit = 40
	more := ""
	if len(diffs) > limit {
		more = fmt.Sprintf("\n\t... and %d more", len(diffs)-limit)
		diffs = diffs[:limit]
	}
	t.Errorf("%s:\n\t%s%s", heading, strings.Join(diffs, "\n\t"), more)
}

// skipRoot: the merged root shows the upper dir, which the test made, not
// the topmost lower that modelTree takes it from.
var skipRoot = map[string]map[string]string{".": {"*": "root is the upper dir"}}

type refKind int

const (
	// refKernel: kernel overlayfs is the reference.
	refKernel refKind = iota
	// refPlain: a plain directory is the reference, for behaviour where
	// overlayfuse deliberately goes beyond the kernel (design.md §3).
	refPlain
)

type scenario struct {
	name  string
	ref   refKind
	build func(*layerSet) // nil: buildStdLayers
	steps []step
	// skip lists expected divergences (path -> field -> why), for
	// every comparison but the oracle's.
	skip map[string]map[string]string
	ro   roMode
	// prepare runs on a kernel mount before the sides are mounted: the
	// system under test then starts from an upper dir the kernel wrote.
	prepare []step
	// sut runs extra checks on the system under test before it is
	// unmounted.
	sut func(t *testing.T, sut *side)
}

// newCanary makes the host directory that layer symlinks point at; no
// operation through a mount may change it.
func newCanary(t *testing.T) (string, tree) {
	d := filepath.Join(t.TempDir(), "host-canary")
	l := layer{t, d}
	l.file("passwd", "canary passwd\n", 0o644).dir("keep", 0o755)
	if err := setTimes(d, layerTime); err != nil {
		t.Fatal(err)
	}
	tr, _ := snapshot(d, false)
	return d, tr
}

func requireMounts(t *testing.T) {
	t.Helper()
	testutil.RequireFUSE(t)
	testutil.RequireKernelOverlay(t)
}

func runScenario(t *testing.T, sc scenario, opts overlayfuse.Options) {
	requireMounts(t)
	if sc.ref == refPlain && sutIsKernel() {
		t.Skip("kernel overlayfs diverges here by design; nothing to self-check")
	}
	build := sc.build
	if build == nil {
		build = buildStdLayers
	}
	canary, canaryTree := newCanary(t)

	refKind := sideKernel
	if sc.ref == refPlain {
		refKind = sidePlain
	}
	ref := newSide(t, refKind, canary, build, opts, sc.ro, sc.prepare)
	sut := newSide(t, sideSUT, canary, build, opts, sc.ro, sc.prepare)
	// Before the unmounts (cleanups run last first), if a step fails.
	t.Cleanup(func() { releaseHeld(ref.root); releaseHeld(sut.root) })
	lowersBefore := rawLowers(t, sut.lowers)
	// Layers and the plain copy are complete: everything from now on is
	// a change made by the operations.
	time.Sleep(10 * time.Millisecond)
	start := time.Now()
	mopts := cmpOpts{since: start, skip: sc.skip}

	// The lower layers alone, merged; diffUppers needs it.
	lowerView, err := modelTree(ref.lowers)
	if err != nil {
		t.Fatal(err)
	}
	initial, probs := snapshot(ref.root, true)
	report(t, "reference before any operation: problems", probs)
	if sc.ref == refKernel && sc.prepare == nil {
		// Checks the harness: its model of overlayfs (also used for
		// 200 layers) must agree with the kernel.
		report(t, "harness: computed merged view differs from the kernel's (want = model, got = kernel)",
			diffTrees(lowerView, initial, cmpOpts{skip: skipRoot}))
	}
	// Differences are reported once, at the step where they appear; the
	// sequence goes on, so one failure does not hide the later ones.
	seen := map[string]bool{}
	fresh := func(lines []string) []string {
		var out []string
		for _, l := range lines {
			if !seen[l] {
				seen[l] = true
				out = append(out, l)
			}
		}
		return out
	}
	var refPrev, sutPrev tree
	compare := func(when string) {
		t.Helper()
		rt, rp := snapshot(ref.root, true)
		st, sp := snapshot(sut.root, true)
		report(t, fmt.Sprintf("%s: %s shows", when, ref.name), fresh(rp))
		report(t, fmt.Sprintf("%s: %s shows", when, sut.name), fresh(sp))
		report(t, fmt.Sprintf("%s: merged trees differ (want = %s, got = %s)", when, ref.name, sut.name),
			fresh(diffTrees(rt, st, mopts)))
		report(t, fmt.Sprintf("%s: st_ino changed where %s kept it (copy-up must keep st_ino)", when, ref.name),
			fresh(inoChanges(refPrev, rt, sutPrev, st)))
		refPrev, sutPrev = rt, st
	}
	compare("initial tree")

	for i, s := range sc.steps {
		when := fmt.Sprintf("step %d %q", i+1, strings.ReplaceAll(s.name, longName, "<255 n's>"))
		refOut := outcome(s.do(ref.root))
		sutOut := outcome(s.do(sut.root))
		switch {
		case refOut != sutOut && s.passthroughStale && sut.passthroughDefault && strings.HasPrefix(sutOut, "ok"):
			t.Logf("%s: %s: %s; %s: %s (allowed: passthrough, default consistency)", when, ref.name, refOut, sut.name, sutOut)
		case refOut != sutOut:
			t.Errorf("%s: %s: %s; %s: %s", when, ref.name, refOut, sut.name, sutOut)
		default:
			t.Logf("%s: %s", when, sutOut)
		}
		compare("after " + when)
	}

	if sc.sut != nil {
		sc.sut(t, sut)
	}
	refFinal, _ := snapshot(ref.root, true)
	sutFinal, sp := snapshot(sut.root, true)
	report(t, "final tree: "+sut.name+" shows", sp)
	report(t, fmt.Sprintf("final trees differ (want = %s, got = %s)", ref.name, sut.name), diffTrees(refFinal, sutFinal, mopts))
	releaseHeld(ref.root)
	releaseHeld(sut.root)

	if err := sut.unmount(); err != nil {
		t.Errorf("unmount %s: %v", sut.name, err)
	}
	if err := ref.unmount(); err != nil {
		t.Errorf("unmount %s: %v", ref.name, err)
	}
	checkAfterUnmount(t, sut, lowersBefore, sutFinal)
	if sc.ro == roOption {
		for _, s := range []*side{ref, sut} {
			if up, _ := snapshot(s.upper, false); len(up) != 1 {
				t.Errorf("read-only %s wrote to its upper dir: %d entries", s.name, len(up)-1)
			}
		}
	}
	if sc.ref == refKernel && sc.ro != roNoUpper {
		ru, _ := snapshot(ref.upper, false)
		su, _ := snapshot(sut.upper, false)
		report(t, fmt.Sprintf("upper dirs differ (want = %s's, got = %s's)", ref.name, sut.name),
			diffUppers(ru, su, lowerView, mopts))
	}
	ct, _ := snapshot(canary, false)
	report(t, "the host directory that layer symlinks point to changed", diffTrees(canaryTree, ct, cmpOpts{ctime: true, ino: true}))
}

// inoChanges lists paths whose st_ino the reference kept from one
// snapshot to the next while the system under test changed it.
func inoChanges(refPrev, refCur, sutPrev, sutCur tree) []string {
	var out []string
	for p, rc := range refCur {
		rp, sp, sc := refPrev[p], sutPrev[p], sutCur[p]
		if rp == nil || sp == nil || sc == nil || rp.Type != rc.Type || sp.Type != sc.Type {
			continue
		}
		if rp.Ino == rc.Ino && sp.Ino != sc.Ino {
			out = append(out, fmt.Sprintf("%s: st_ino %d -> %d", p, sp.Ino, sc.Ino))
		}
	}
	sort.Strings(out)
	return out
}

// checkAfterUnmount checks what the SUT left on disk: lower layers
// untouched, an upper dir in kernel format (no .wh.* files, whiteouts
// 0/0), and the oracle: the kernel mounting the same lowers with the
// resulting upper shows what the SUT showed.
func checkAfterUnmount(t *testing.T, sut *side, lowersBefore []tree, sutFinal tree) {
	t.Helper()
	for i, l := range rawLowers(t, sut.lowers) {
		report(t, fmt.Sprintf("lower layer %s changed (must never be written)", sut.lowers[i]),
			diffTrees(lowersBefore[i], l, cmpOpts{ctime: true, ino: true}))
	}
	if sut.upper == "" {
		return
	}
	up, probs := snapshot(sut.upper, false)
	report(t, "reading the upper dir", probs)
	var format []string
	for p, e := range up {
		if strings.HasPrefix(filepath.Base(p), ".wh.") && sutFinal[p] == nil {
			format = append(format, p+": aufs/fuse-overlayfs style whiteout file in the upper dir (the mount did not show it)")
		}
		if v, ok := e.Xattrs[xattrOpaque]; ok && e.Type != "dir" {
			format = append(format, fmt.Sprintf("%s: %s=%s on a %s", p, xattrOpaque, v, e.Type))
		}
	}
	report(t, "upper dir is not in kernel overlayfs format", format)

	oracle := filepath.Join(sut.base, "oracle")
	owork := filepath.Join(sut.base, "oracle-work")
	for _, d := range []string{oracle, owork} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mountKernel(t, oracle, sut.lowers, sut.upper, owork, oracleOpts)
	ot, op := snapshot(oracle, true)
	report(t, "kernel mount of the "+sut.name+" upper shows", op)
	// Every mtime must agree: both read the same upper and lower files.
	report(t, fmt.Sprintf("oracle: kernel mount of %s's upper dir differs from what %s showed (want = %s, got = kernel)", sut.name, sut.name, sut.name),
		diffTrees(sutFinal, ot, cmpOpts{}))
	unmountDir(t, oracle)
}
