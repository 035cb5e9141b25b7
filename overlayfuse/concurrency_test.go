package overlayfuse

// TestConcurrency: several worker processes (this test binary again, see
// TestMain) create, rename, unlink, write, link, copy up, list and stat
// overlapping names in a few shared directories of one mount, over lower
// layers with files, hard links, directories and a whiteout. Afterwards:
// no worker saw EIO, ESTALE or another errno a race cannot explain, no
// readdir listed a name twice, and kernel overlayfs mounting the same
// lower and upper dirs shows the tree our mount showed at the end.
//
// OVERLAYFUSE_CONCURRENCY_DURATION sets how long the workers run per mode
// (a Go duration, default 8s); OVERLAYFUSE_CONCURRENCY_SEED replays the
// workers' choices of a logged run (their interleaving differs).

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"golang.org/x/sys/unix"
)

const (
	workerEnv      = "OVERLAYFUSE_TEST_WORKER"
	concurrencyDur = "OVERLAYFUSE_CONCURRENCY_DURATION"
	concurrencySd  = "OVERLAYFUSE_CONCURRENCY_SEED"

	workerProcs      = 4
	workerGoroutines = 2
	// maxHeld files stay open in each worker goroutine.
	maxHeld = 3
	// maxEvents bounds the events one worker reports in full.
	maxEvents = 50
)

// The shared namespace: every worker picks its names from these.
var (
	conDirs  = []string{"d0", "d1", "d2", "d0/sub", "d2/sub"}
	conNames = []string{"f0", "f1", "f2", "f3", "f4", "f5", "n0", "n1", "n2", "n3", "sub", "s1"}
)

// workerSpec is what one worker process does.
type workerSpec struct {
	Root       string
	Seed       uint64
	Worker     int
	Goroutines int
	Duration   time.Duration
}

// workerEvent is one result a test must look at: an errno no race
// explains, or a name listed twice by one readdir.
type workerEvent struct {
	Who   string // worker/goroutine
	Op    string
	Path  string
	Errno string
	Dup   string `json:",omitempty"`
}

func (e workerEvent) String() string {
	if e.Dup != "" {
		return fmt.Sprintf("%s: readdir %s listed %q twice", e.Who, e.Path, e.Dup)
	}
	return fmt.Sprintf("%s: %s %s: %s", e.Who, e.Op, e.Path, e.Errno)
}

// workerReport is what a worker prints on stdout when its time is up.
type workerReport struct {
	Counts  map[string]int // "op errno" (or "op ok") -> times
	Bad     []workerEvent  // EIO, ESTALE and unexplained errnos
	Dups    []workerEvent
	NBad    int
	NDups   int
	Readdir int
}

func TestConcurrency(t *testing.T) {
	testutil.RequireFUSE(t)
	testutil.RequireKernelOverlay(t)
	dur := 8 * time.Second
	if v := os.Getenv(concurrencyDur); v != "" {
		d, err := time.ParseDuration(v)
		must(t, err)
		dur = d
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv(concurrencySd); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		must(t, err)
		seed = s
	}
	for i, m := range []struct {
		name string
		opts Options
	}{
		{"default", Options{}},
		{"passthrough-off", Options{Passthrough: PassthroughOff}},
		{"strict", Options{Consistency: ConsistencyStrict}},
	} {
		t.Run(m.name, func(t *testing.T) {
			s := seed + uint64(i)
			t.Logf("seed %d (replay: %s=%d %s=%s)", s, concurrencySd, seed, concurrencyDur, dur)
			runConcurrency(t, m.opts, s, dur)
			if t.Failed() {
				t.Logf("seed %d: replay with %s=%d", s, concurrencySd, seed)
			}
		})
	}
}

// buildConcurrencyLayers fills two lower layers (lowers[0] on top): shared
// directories merged from both, hard links within and across directories
// in each layer, a file hidden by a whiteout and one shadowed from above.
func buildConcurrencyLayers(t *testing.T, lowers []string) {
	top, bot := lowers[0], lowers[1]
	for _, d := range []string{"d0", "d1", "d2"} {
		for i := 0; i < 6; i++ {
			writeFile(t, filepath.Join(bot, d, fmt.Sprintf("f%d", i)), fmt.Sprintf("bottom %s/f%d\n", d, i), 0o644)
		}
	}
	writeFile(t, filepath.Join(bot, "d0/sub/f0"), "bottom sub\n", 0o600)
	must(t, os.MkdirAll(filepath.Join(bot, "d2/sub"), 0o755))
	link := func(layer, from, to string) {
		_ = os.Remove(filepath.Join(layer, to))
		must(t, os.Link(filepath.Join(layer, from), filepath.Join(layer, to)))
	}
	link(bot, "d0/f0", "d1/f0")
	link(bot, "d0/f0", "d2/f0")
	link(bot, "d1/f1", "d1/f2")
	writeFile(t, filepath.Join(top, "d0/f3"), "top d0/f3 shadows the bottom one\n", 0o755)
	writeFile(t, filepath.Join(top, "d2/f5"), "top d2/f5\n", 0o644)
	writeFile(t, filepath.Join(top, "d2/sub/f1"), "top sub\n", 0o644)
	link(top, "d2/f5", "d0/f5")
	must(t, os.MkdirAll(filepath.Join(top, "d1"), 0o755))
	must(t, unix.Mknod(filepath.Join(top, "d1/f4"), unix.S_IFCHR, 0))
}

func runConcurrency(t *testing.T, opts Options, seed uint64, dur time.Duration) {
	lowers, upper, work := newLayers(t, 2)
	buildConcurrencyLayers(t, lowers)
	linked := lowerLinkInos(t, lowers)
	tmp := t.TempDir()
	dir, kdir := filepath.Join(tmp, "merged"), filepath.Join(tmp, "kernel")
	must(t, os.Mkdir(dir, 0o755))
	must(t, os.Mkdir(kdir, 0o755))
	unmount, pt := MountInChild(t, dir, Layers{Lower: lowers, Upper: upper, Work: work}, opts)

	reps := runWorkers(t, dir, seed, dur)
	counts := map[string]int{}
	var bad, dups []string
	nbad, ndups, nreaddir := 0, 0, 0
	for _, r := range reps {
		for k, n := range r.Counts {
			counts[k] += n
		}
		for _, e := range r.Bad {
			bad = append(bad, e.String())
		}
		for _, e := range r.Dups {
			dups = append(dups, e.String())
		}
		nbad, ndups, nreaddir = nbad+r.NBad, ndups+r.NDups, nreaddir+r.Readdir
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var tab strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&tab, "\n\t%-24s %d", k, counts[k])
	}
	t.Logf("passthrough %v; %d worker processes x %d goroutines for %s; operations by result:%s", pt, workerProcs, workerGoroutines, dur, tab.String())
	if nbad > 0 {
		t.Errorf("seed %d: %d operations failed with an errno no race explains (such as EIO, ESTALE); the first ones:\n\t%s",
			seed, nbad, strings.Join(bad, "\n\t"))
	}
	if ndups > 0 {
		t.Errorf("seed %d: %d of %d readdirs listed a name twice; the first ones:\n\t%s", seed, ndups, nreaddir, strings.Join(dups, "\n\t"))
	}

	ours, probs := walkTree(dir)
	if len(probs) > 0 {
		t.Errorf("seed %d: walking overlayfuse at the end:\n\t%s", seed, strings.Join(probs, "\n\t"))
	}
	if err := unmount(); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	kwork := filepath.Join(filepath.Dir(upper), "kernel-work")
	must(t, os.Mkdir(kwork, 0o755))
	data := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,index=off,redirect_dir=follow,metacopy=off,xino=off",
		strings.Join(lowers, ":"), upper, kwork)
	if err := unix.Mount("overlay", kdir, "overlay", 0, data); err != nil {
		t.Fatalf("mount -t overlay -o %s: %v", data, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(kdir, unix.MNT_DETACH) })
	theirs, kprobs := walkTree(kdir)
	if len(kprobs) > 0 {
		t.Errorf("walking kernel overlayfs over the same dirs:\n\t%s", strings.Join(kprobs, "\n\t"))
	}
	if d := diffConTrees(ours, theirs, linked); len(d) > 0 {
		t.Errorf("seed %d: kernel overlayfs over the same lower and upper dirs differs from what overlayfuse showed (%d of %d paths):\n\t%s",
			seed, len(d), len(ours), strings.Join(d, "\n\t"))
	} else {
		t.Logf("kernel overlayfs shows the same %d paths", len(ours))
	}
	must(t, unix.Unmount(kdir, 0))
}

// runWorkers runs the worker processes on root until they are done and
// returns their reports.
func runWorkers(t *testing.T, root string, seed uint64, dur time.Duration) []workerReport {
	type proc struct {
		cmd  *exec.Cmd
		out  strings.Builder
		done chan error
	}
	var procs []*proc
	for i := 0; i < workerProcs; i++ {
		spec, err := json.Marshal(workerSpec{Root: root, Seed: seed, Worker: i, Goroutines: workerGoroutines, Duration: dur})
		must(t, err)
		p := &proc{cmd: exec.Command(os.Args[0]), done: make(chan error, 1)}
		p.cmd.Env = append(os.Environ(), workerEnv+"="+string(spec))
		p.cmd.Stderr = os.Stderr
		p.cmd.Stdout = &p.out
		must(t, p.cmd.Start())
		go func() { p.done <- p.cmd.Wait() }()
		t.Cleanup(func() {
			_ = p.cmd.Process.Kill()
		})
		procs = append(procs, p)
	}
	// A worker stuck in the mount is a hung operation: report it.
	limit := time.After(dur + 2*time.Minute)
	var reps []workerReport
	for i, p := range procs {
		select {
		case err := <-p.done:
			var r workerReport
			if err != nil {
				t.Errorf("worker %d: %v", i, err)
			} else if err := json.Unmarshal([]byte(p.out.String()), &r); err != nil {
				t.Errorf("worker %d: report %q: %v", i, p.out.String(), err)
			}
			reps = append(reps, r)
		case <-limit:
			t.Fatalf("seed %d: worker %d still running %s after its end: an operation hangs", seed, i, 2*time.Minute)
		}
	}
	return reps
}

// concurrencyWorker runs one worker process; see TestMain.
func concurrencyWorker(specJSON string) int {
	var s workerSpec
	if err := json.Unmarshal([]byte(specJSON), &s); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	rep := workerReport{Counts: map[string]int{}}
	var mu sync.Mutex
	record := func(who, op, path string, err error) {
		mu.Lock()
		defer mu.Unlock()
		var e unix.Errno
		switch {
		case err == nil:
			rep.Counts[op+" ok"]++
			return
		case errors.As(err, &e):
		default:
			e = unix.Errno(0)
		}
		rep.Counts[op+" "+errnoString(e)]++
		if !raceErrno(op, e) {
			rep.NBad++
			if len(rep.Bad) < maxEvents {
				rep.Bad = append(rep.Bad, workerEvent{Who: who, Op: op, Path: path, Errno: errnoString(e) + " (" + err.Error() + ")"})
			}
		}
	}
	dup := func(who, dir, name string) {
		mu.Lock()
		defer mu.Unlock()
		rep.NDups++
		if len(rep.Dups) < maxEvents {
			rep.Dups = append(rep.Dups, workerEvent{Who: who, Op: "readdir", Path: dir, Dup: name})
		}
	}
	deadline := time.Now().Add(s.Duration)
	var wg sync.WaitGroup
	for g := 0; g < s.Goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			w := conWorker{
				root: s.Root, who: fmt.Sprintf("worker %d/%d", s.Worker, g),
				rng:    rand.New(rand.NewPCG(s.Seed, uint64(s.Worker*64+g))),
				record: record, dup: dup,
			}
			for time.Now().Before(deadline) {
				if w.step() {
					mu.Lock()
					rep.Readdir++
					mu.Unlock()
				}
			}
		}(g)
	}
	wg.Wait()
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// raceErrnos are, per operation, the errnos a race between workers
// explains: a name gone or taken, a parent that became a file, a
// directory where a file was (or not empty), a directory moved into
// itself, a link of what became a directory. Anything else is a defect.
var raceErrnos = map[string][]unix.Errno{
	"create":    {unix.ENOENT, unix.ENOTDIR, unix.EISDIR},
	"append":    {unix.ENOENT, unix.ENOTDIR, unix.EISDIR},
	"read":      {unix.ENOENT, unix.ENOTDIR, unix.EISDIR},
	"open-ro":   {unix.ENOENT, unix.ENOTDIR},
	"read-held": {unix.EISDIR},
	"rename":    {unix.ENOENT, unix.ENOTDIR, unix.EISDIR, unix.ENOTEMPTY, unix.EINVAL},
	"exchange":  {unix.ENOENT, unix.ENOTDIR, unix.EINVAL},
	"unlink":    {unix.ENOENT, unix.ENOTDIR, unix.EISDIR},
	"link":      {unix.ENOENT, unix.ENOTDIR, unix.EEXIST, unix.EPERM},
	"chmod":     {unix.ENOENT, unix.ENOTDIR},
	"mkdir":     {unix.ENOENT, unix.ENOTDIR, unix.EEXIST},
	"rmdir":     {unix.ENOENT, unix.ENOTDIR, unix.ENOTEMPTY},
	"readdir":   {unix.ENOENT, unix.ENOTDIR},
	"stat":      {unix.ENOENT, unix.ENOTDIR},
}

func raceErrno(op string, e unix.Errno) bool {
	return slices.Contains(raceErrnos[op], e)
}

func errnoString(e unix.Errno) string {
	if e == 0 {
		return "non-errno error"
	}
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return fmt.Sprintf("errno %d", int(e))
}

// conWorker is one goroutine of a worker process.
type conWorker struct {
	root   string
	who    string
	rng    *rand.Rand
	record func(who, op, path string, err error)
	dup    func(who, dir, name string)
	held   []heldFile
}

func (w *conWorker) name() string {
	return conDirs[w.rng.IntN(len(conDirs))] + "/" + conNames[w.rng.IntN(len(conNames))]
}

func (w *conWorker) p(rel string) string { return filepath.Join(w.root, rel) }

// data is what a write puts in a file: who wrote it, and a size that
// varies so that sizes are compared too.
func (w *conWorker) data() []byte {
	return []byte(strings.Repeat(w.who+" wrote this\n", 1+w.rng.IntN(300)))
}

// step does one random operation; it reports whether it was a readdir.
func (w *conWorker) step() bool {
	switch k := w.rng.IntN(100); {
	case k < 12: // create or truncate, and write
		a := w.name()
		w.record(w.who, "create", a, writeTo(w.p(a), unix.O_CREAT|unix.O_WRONLY|unix.O_TRUNC, w.data()))
	case k < 24: // append: copies lower files up
		a := w.name()
		w.record(w.who, "append", a, writeTo(w.p(a), unix.O_WRONLY|unix.O_APPEND, w.data()))
	case k < 34:
		a, b := w.name(), w.name()
		w.record(w.who, "rename", a+" -> "+b, unix.Renameat2(unix.AT_FDCWD, w.p(a), unix.AT_FDCWD, w.p(b), 0))
	case k < 37:
		a, b := w.name(), w.name()
		w.record(w.who, "exchange", a+" <-> "+b, unix.Renameat2(unix.AT_FDCWD, w.p(a), unix.AT_FDCWD, w.p(b), unix.RENAME_EXCHANGE))
	case k < 45:
		a := w.name()
		w.record(w.who, "unlink", a, unix.Unlink(w.p(a)))
	case k < 53:
		a, b := w.name(), w.name()
		w.record(w.who, "link", a+" -> "+b, unix.Link(w.p(a), w.p(b)))
	case k < 57: // chmod: copy-up without data written
		a := w.name()
		w.record(w.who, "chmod", a, unix.Fchmodat(unix.AT_FDCWD, w.p(a), []uint32{0o600, 0o644, 0o755}[w.rng.IntN(3)], 0))
	case k < 61:
		a := w.name()
		w.record(w.who, "mkdir", a, unix.Mkdir(w.p(a), 0o755))
	case k < 64:
		a := w.name()
		w.record(w.who, "rmdir", a, unix.Rmdir(w.p(a)))
	case k < 80:
		d := conDirs[w.rng.IntN(len(conDirs))]
		names, err := readdirNames(w.p(d))
		w.record(w.who, "readdir", d, err)
		seen := map[string]bool{}
		for _, n := range names {
			if seen[n] {
				w.dup(w.who, d, n)
			}
			seen[n] = true
		}
		return true
	case k < 90:
		a := w.name()
		var st unix.Stat_t
		w.record(w.who, "stat", a, unix.Lstat(w.p(a), &st))
	case k < 95:
		a := w.name()
		_, err := os.ReadFile(w.p(a))
		w.record(w.who, "read", a, err)
	default: // keep a file open read-only while others write it
		if len(w.held) == maxHeld {
			unix.Close(w.held[0].fd)
			w.held = append(w.held[:0], w.held[1:]...)
		}
		a := w.name()
		fd, err := unix.Open(w.p(a), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		w.record(w.who, "open-ro", a, err)
		if err == nil {
			w.held = append(w.held, heldFile{a, fd})
		}
		for _, h := range w.held {
			_, err := unix.Pread(h.fd, make([]byte, 512), 0)
			w.record(w.who, "read-held", h.name, err)
		}
	}
	return false
}

// heldFile is a file a worker keeps open across its next operations.
type heldFile struct {
	name string
	fd   int
}

func writeTo(path string, flags int, data []byte) error {
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	_, werr := unix.Write(fd, data)
	if err := unix.Close(fd); werr == nil {
		werr = err
	}
	return werr
}

// readdirNames lists dir with getdents, all of it, through one fd.
func readdirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// conEntry is what the final comparison looks at for one path.
type conEntry struct {
	Type   string
	Mode   uint32
	Size   int64
	Hash   string
	Target string
	Nlink  uint64
	Ino    uint64
}

// walkTree lists the tree under root: type, permission bits, and for
// files size, content hash and link count, for symlinks the target. It
// reports names a readdir listed twice as problems.
func walkTree(root string) (map[string]conEntry, []string) {
	tree := map[string]conEntry{}
	var probs []string
	var walk func(rel string)
	walk = func(rel string) {
		p := filepath.Join(root, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			probs = append(probs, fmt.Sprintf("lstat %s: %v", rel, err))
			return
		}
		e := conEntry{Mode: st.Mode & 0o7777, Nlink: uint64(st.Nlink), Ino: st.Ino}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			e.Type = "dir"
			tree[rel] = e
			names, err := readdirNames(p)
			if err != nil {
				probs = append(probs, fmt.Sprintf("readdir %s: %v", rel, err))
			}
			sort.Strings(names)
			for i, n := range names {
				if i > 0 && names[i-1] == n {
					probs = append(probs, fmt.Sprintf("readdir %s listed %q twice", rel, n))
					continue
				}
				walk(filepath.Join(rel, n))
			}
			return
		case unix.S_IFREG:
			e.Type = "file"
			e.Size = st.Size
			b, err := os.ReadFile(p)
			if err != nil {
				probs = append(probs, fmt.Sprintf("read %s: %v", rel, err))
			}
			h := sha256.Sum256(b)
			e.Hash = hex.EncodeToString(h[:8])
		case unix.S_IFLNK:
			e.Type = "symlink"
			e.Target, _ = os.Readlink(p)
		default:
			e.Type = fmt.Sprintf("mode %#o rdev %d", st.Mode&unix.S_IFMT, st.Rdev)
		}
		tree[rel] = e
	}
	walk(".")
	return tree, probs
}

// lowerLinkInos are the inode numbers of files with hard links in the
// lower layers: the names of such a file that the kernel forgot may keep
// counting in st_nlink (README), and kernel overlayfs with index=off counts
// them its own way, so their link counts are not compared.
func lowerLinkInos(t *testing.T, lowers []string) map[uint64]bool {
	inos := map[uint64]bool{}
	for _, l := range lowers {
		err := filepath.WalkDir(l, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink > 1 {
				inos[st.Ino] = true
			}
			return nil
		})
		must(t, err)
	}
	return inos
}

// diffConTrees lists how got (the kernel's view) differs from want (ours).
func diffConTrees(want, got map[string]conEntry, linked map[uint64]bool) []string {
	var out []string
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			out = append(out, fmt.Sprintf("%s: %s on overlayfuse, missing on the kernel", p, w.Type))
			continue
		}
		if w.Type != g.Type {
			out = append(out, fmt.Sprintf("%s: %s on overlayfuse, %s on the kernel", p, w.Type, g.Type))
			continue
		}
		if p != "." && w.Mode != g.Mode {
			out = append(out, fmt.Sprintf("%s: mode %#o on overlayfuse, %#o on the kernel", p, w.Mode, g.Mode))
		}
		if w.Type == "file" {
			if w.Size != g.Size || w.Hash != g.Hash {
				out = append(out, fmt.Sprintf("%s: size %d sha256 %s on overlayfuse, size %d sha256 %s on the kernel", p, w.Size, w.Hash, g.Size, g.Hash))
			}
			if w.Nlink != g.Nlink && !linked[g.Ino] {
				out = append(out, fmt.Sprintf("%s: nlink %d on overlayfuse, %d on the kernel", p, w.Nlink, g.Nlink))
			}
		}
		if w.Target != g.Target {
			out = append(out, fmt.Sprintf("%s: symlink to %q on overlayfuse, %q on the kernel", p, w.Target, g.Target))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			out = append(out, fmt.Sprintf("%s: %s on the kernel, missing on overlayfuse", p, g.Type))
		}
	}
	sort.Strings(out)
	return out
}
