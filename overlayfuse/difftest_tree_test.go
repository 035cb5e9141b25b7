package overlayfuse_test

// Tree snapshots and their comparison for the differential tests: what a
// mount (or a raw layer directory) shows, reduced to the fields that must
// agree between kernel overlayfs and overlayfuse.

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"golang.org/x/sys/unix"
)

const (
	xattrOverlayPrefix = "trusted.overlay."
	xattrOpaque        = "trusted.overlay.opaque"
)

// entry is one file of a tree, as lstat, readlink, read and the xattr calls
// show it.
type entry struct {
	Type   string // dir, file, symlink, fifo, chr, blk, sock, whiteout (chr 0/0)
	Perm   uint32 // mode & 07777
	Uid    uint32
	Gid    uint32
	Size   int64
	Nlink  uint64
	Rdev   uint64
	Ino    uint64
	Dev    uint64
	Mtime  int64 // ns since the epoch
	Ctime  int64
	Target string            // symlink target
	Data   string            // regular file content, quoted or digested
	Xattrs map[string]string // every listed xattr, value quoted
}

// tree maps slash-separated paths relative to the root ("." is the root)
// to their entries.
type tree map[string]*entry

func fileType(mode uint32, rdev uint64) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFREG:
		return "file"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFCHR:
		if rdev == 0 {
			return "whiteout"
		}
		return "chr"
	case unix.S_IFBLK:
		return "blk"
	case unix.S_IFSOCK:
		return "sock"
	}
	return fmt.Sprintf("type%#o", mode&unix.S_IFMT)
}

func describeData(b []byte) string {
	if len(b) <= 48 {
		ok := true
		for _, r := range string(b) {
			if !unicode.IsPrint(r) && r != '\n' {
				ok = false
				break
			}
		}
		if ok {
			return strconv.Quote(string(b))
		}
	}
	sum := sha256.Sum256(b)
	return fmt.Sprintf("%d bytes sha256:%x", len(b), sum[:8])
}

// errnoName names the errno inside err, or returns err's text.
func errnoName(err error) string {
	var en unix.Errno
	if errors.As(err, &en) {
		if n := unix.ErrnoName(en); n != "" {
			return n
		}
		return fmt.Sprintf("errno %d", int(en))
	}
	return err.Error()
}

// readEntry describes the file at p without following a final symlink.
// Errors on the side (unreadable content or xattrs) are returned as
// problems; the entry is still filled as far as possible.
func readEntry(p string) (*entry, []string, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return nil, nil, err
	}
	var probs []string
	e := &entry{
		Type:  fileType(st.Mode, st.Rdev),
		Perm:  st.Mode & 07777,
		Uid:   st.Uid,
		Gid:   st.Gid,
		Size:  st.Size,
		Nlink: st.Nlink,
		Rdev:  st.Rdev,
		Ino:   st.Ino,
		Dev:   st.Dev,
		Mtime: st.Mtim.Nano(),
		Ctime: st.Ctim.Nano(),
	}
	switch e.Type {
	case "symlink":
		t, err := os.Readlink(p)
		if err != nil {
			probs = append(probs, "readlink: "+errnoName(err))
		}
		e.Target = t
	case "file":
		b, err := os.ReadFile(p)
		if err != nil {
			probs = append(probs, "read: "+errnoName(err))
		}
		e.Data = describeData(b)
	}
	xs, err := listXattrs(p)
	if err != nil {
		probs = append(probs, "xattrs: "+errnoName(err))
	}
	e.Xattrs = xs
	return e, probs, nil
}

func listXattrs(p string) (map[string]string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if errors.Is(err, unix.ERANGE) {
		sz, err2 := unix.Llistxattr(p, nil)
		if err2 != nil {
			return nil, err2
		}
		buf = make([]byte, sz)
		n, err = unix.Llistxattr(p, buf)
	}
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, err
	}
	out := map[string]string{}
	for _, k := range strings.Split(string(buf[:n]), "\x00") {
		if k == "" {
			continue
		}
		v, err := getXattr(p, k)
		if err != nil {
			out[k] = "<" + errnoName(err) + ">"
			continue
		}
		out[k] = strconv.Quote(v)
	}
	return out, nil
}

func getXattr(p, k string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Lgetxattr(p, k, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// snapshot walks root and describes every file under it. problems lists
// what a correct filesystem must not show: failing lstat/read/listxattr,
// duplicate names in a directory listing, a d_type that disagrees with
// lstat, and (merged views only) visible trusted.overlay.* xattrs or
// whiteouts.
func snapshot(root string, merged bool) (t tree, problems []string) {
	t = tree{}
	var walk func(rel string)
	walk = func(rel string) {
		p := filepath.Join(root, rel)
		e, probs, err := readEntry(p)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: lstat: %s", rel, errnoName(err)))
			return
		}
		for _, pr := range probs {
			problems = append(problems, rel+": "+pr)
		}
		if merged {
			for k := range e.Xattrs {
				if strings.HasPrefix(k, xattrOverlayPrefix) {
					problems = append(problems, fmt.Sprintf("%s: private xattr %s visible", rel, k))
				}
			}
			if e.Type == "whiteout" {
				problems = append(problems, rel+": whiteout visible in the merged view")
			}
		}
		t[rel] = e
		if e.Type != "dir" {
			return
		}
		f, err := os.Open(p)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: open dir: %s", rel, errnoName(err)))
			return
		}
		des, err := f.ReadDir(-1)
		f.Close()
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: readdir: %s", rel, errnoName(err)))
		}
		seen := map[string]bool{}
		var names []string
		dtypes := map[string]fs.FileMode{}
		for _, de := range des {
			if seen[de.Name()] {
				problems = append(problems, fmt.Sprintf("%s: readdir lists %q twice", rel, de.Name()))
				continue
			}
			seen[de.Name()] = true
			names = append(names, de.Name())
			dtypes[de.Name()] = de.Type()
		}
		sort.Strings(names)
		for _, n := range names {
			child := path.Join(rel, n)
			walk(child)
			if ce := t[child]; ce != nil && dtypeName(dtypes[n]) != ce.Type && !(ce.Type == "whiteout" && dtypeName(dtypes[n]) == "chr") {
				problems = append(problems, fmt.Sprintf("%s: readdir d_type %s, lstat %s", child, dtypeName(dtypes[n]), ce.Type))
			}
		}
	}
	walk(".")
	if merged {
		problems = append(problems, inoProblems(t)...)
	}
	return t, problems
}

// inoProblems: in a merged view every file has the mount's st_dev, and
// two paths share an st_ino only as hard links (regular files with
// nlink > 1).
func inoProblems(t tree) []string {
	var out []string
	root := t["."]
	byIno := map[uint64][]string{}
	for p, e := range t {
		if root != nil && e.Dev != root.Dev {
			out = append(out, fmt.Sprintf("%s: st_dev %d:%d, the root has %d:%d", p,
				unix.Major(e.Dev), unix.Minor(e.Dev), unix.Major(root.Dev), unix.Minor(root.Dev)))
		}
		byIno[e.Ino] = append(byIno[e.Ino], p)
	}
	for ino, ps := range byIno {
		if len(ps) < 2 {
			continue
		}
		sort.Strings(ps)
		for _, p := range ps {
			if e := t[p]; e.Type != "file" || e.Nlink < uint64(len(ps)) {
				out = append(out, fmt.Sprintf("st_ino %d shared by %s", ino, strings.Join(ps, ", ")))
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

func dtypeName(m fs.FileMode) string {
	switch m.Type() {
	case fs.ModeDir:
		return "dir"
	case 0:
		return "file"
	case fs.ModeSymlink:
		return "symlink"
	case fs.ModeNamedPipe:
		return "fifo"
	case fs.ModeDevice | fs.ModeCharDevice:
		return "chr"
	case fs.ModeDevice:
		return "blk"
	case fs.ModeSocket:
		return "sock"
	}
	return m.Type().String()
}

// cmpOpts says which fields a comparison looks at.
type cmpOpts struct {
	// since is when the operations began. An mtime before it (from the
	// layers) must be equal on both sides; one after it only has to be
	// after it on the other side too, as the two runs happen at
	// different moments. Zero compares mtimes exactly. ctimes are not
	// compared here: a copy-up cannot keep them, and when the view shows
	// the new one is not something overlayfs defines; opTimes checks
	// "changed or not" for chosen operations instead.
	since time.Time
	// ctime and ino are compared exactly (raw lower layers, which must
	// not change at all).
	ctime, ino bool
	// skip lists expected divergences: path -> field -> why.
	skip map[string]map[string]string
	// noXattr drops xattrs with this prefix from both sides before
	// comparing (their presence is checked elsewhere).
	noXattr string
}

func fmtXattrs(m map[string]string, drop string) string {
	var ks []string
	for k := range m {
		if drop != "" && strings.HasPrefix(k, drop) {
			continue
		}
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var b strings.Builder
	for i, k := range ks {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(k + "=" + m[k])
	}
	if b.Len() == 0 {
		return "(none)"
	}
	return b.String()
}

func fmtTime(ns int64) string { return time.Unix(0, ns).UTC().Format(time.RFC3339Nano) }

func (e *entry) short() string {
	s := fmt.Sprintf("%s %#o %d:%d", e.Type, e.Perm, e.Uid, e.Gid)
	switch e.Type {
	case "file":
		s += fmt.Sprintf(" size=%d nlink=%d %s", e.Size, e.Nlink, e.Data)
	case "symlink":
		s += " -> " + e.Target
	case "chr", "blk":
		s += fmt.Sprintf(" rdev=%d:%d", unix.Major(e.Rdev), unix.Minor(e.Rdev))
	}
	return s
}

// diffEntries lists the fields in which got differs from ref.
func diffEntries(p string, ref, got *entry, o cmpOpts) []string {
	var out []string
	skip := o.skip[p]
	add := func(field string, r, g any) {
		if _, ok := skip[field]; ok {
			return
		}
		out = append(out, fmt.Sprintf("%s: %s: want %v, got %v", p, field, r, g))
	}
	if ref.Type != got.Type {
		add("type", ref.short(), got.short())
		return out
	}
	if ref.Perm != got.Perm {
		add("mode", fmt.Sprintf("%#o", ref.Perm), fmt.Sprintf("%#o", got.Perm))
	}
	if ref.Uid != got.Uid || ref.Gid != got.Gid {
		add("owner", fmt.Sprintf("%d:%d", ref.Uid, ref.Gid), fmt.Sprintf("%d:%d", got.Uid, got.Gid))
	}
	if ref.Type != "dir" && ref.Size != got.Size {
		add("size", ref.Size, got.Size)
	}
	if ref.Type == "file" && ref.Nlink != got.Nlink {
		add("nlink", ref.Nlink, got.Nlink)
	}
	if (ref.Type == "chr" || ref.Type == "blk") && ref.Rdev != got.Rdev {
		add("rdev", fmt.Sprintf("%d:%d", unix.Major(ref.Rdev), unix.Minor(ref.Rdev)),
			fmt.Sprintf("%d:%d", unix.Major(got.Rdev), unix.Minor(got.Rdev)))
	}
	if ref.Target != got.Target {
		add("symlink target", strconv.Quote(ref.Target), strconv.Quote(got.Target))
	}
	if ref.Data != got.Data {
		add("content", ref.Data, got.Data)
	}
	if rx, gx := fmtXattrs(ref.Xattrs, o.noXattr), fmtXattrs(got.Xattrs, o.noXattr); rx != gx {
		add("xattrs", rx, gx)
	}
	if o.since.IsZero() {
		if ref.Mtime != got.Mtime {
			add("mtime", fmtTime(ref.Mtime), fmtTime(got.Mtime))
		}
	} else {
		since := o.since.UnixNano()
		if ref.Mtime < since && ref.Mtime != got.Mtime {
			add("mtime", fmtTime(ref.Mtime), fmtTime(got.Mtime))
		}
		if ref.Mtime >= since && got.Mtime < since {
			add("mtime", "changed by the operations (after "+fmtTime(since)+")", "unchanged "+fmtTime(got.Mtime))
		}
	}
	if o.ctime && ref.Ctime != got.Ctime {
		add("ctime", fmtTime(ref.Ctime), fmtTime(got.Ctime))
	}
	if o.ino && ref.Ino != got.Ino {
		add("ino", ref.Ino, got.Ino)
	}
	return out
}

// diffTrees lists every difference between two trees, one line each, in
// path order.
func diffTrees(ref, got tree, o cmpOpts) []string {
	sorted := sortedPaths(ref, got)
	var out []string
	for _, p := range sorted {
		r, g := ref[p], got[p]
		_, skipAll := o.skip[p]["*"]
		switch {
		case skipAll:
		case r == nil:
			out = append(out, fmt.Sprintf("%s: want no such file, got %s", p, g.short()))
		case g == nil:
			out = append(out, fmt.Sprintf("%s: want %s, got no such file", p, r.short()))
		default:
			out = append(out, diffEntries(p, r, g, o)...)
		}
	}
	return out
}

// isOpaque reports whether a raw layer entry is an opaque directory.
func (e *entry) isOpaque() bool {
	return e != nil && e.Type == "dir" && e.Xattrs[xattrOpaque] == strconv.Quote("y")
}

// diffUppers compares two upper directories (raw, unmerged) produced by
// the same operations over the same lower layers. Only what decides the
// merged view must agree:
//   - every non-whiteout entry, with its type, mode, owner, size, content,
//     link target, rdev and xattrs other than trusted.overlay.*;
//   - trusted.overlay.origin/impure/redirect/uuid and other bookkeeping
//     xattrs the kernel writes are ignored: they do not change what the
//     mount shows (the kernel re-mount of the overlayfuse upper checks that);
//   - a whiteout, or the opaque flag of a directory, only where a lower
//     layer has an entry that it hides (lowerView is the merged view of
//     the lower layers alone) and no opaque directory above it in the
//     same upper hides it anyway. A spare whiteout or opaque flag over
//     nothing is harmless.
func diffUppers(ref, got, lowerView tree, o cmpOpts) []string {
	hidden := func(up tree, p string) bool {
		for a := path.Dir(p); a != "." && a != "/"; a = path.Dir(a) {
			if up[a].isOpaque() {
				return true
			}
		}
		return false
	}
	matters := func(p string, wantDir bool) bool {
		l := lowerView[p]
		if l == nil || (wantDir && l.Type != "dir") {
			return false
		}
		return true
	}
	strip := func(up tree) tree {
		out := tree{}
		for p, e := range up {
			if e.Type != "whiteout" {
				out[p] = e
			}
		}
		return out
	}
	o.noXattr = xattrOverlayPrefix
	out := diffTrees(strip(ref), strip(got), o)
	sorted := sortedPaths(ref, got)
	for _, p := range sorted {
		if p == "." {
			continue
		}
		rw := ref[p] != nil && ref[p].Type == "whiteout" && !hidden(ref, p)
		gw := got[p] != nil && got[p].Type == "whiteout" && !hidden(got, p)
		if rw != gw && matters(p, false) {
			out = append(out, fmt.Sprintf("%s: whiteout in upper: want %v, got %v (lower has %s)", p, rw, gw, lowerView[p].short()))
		}
		ro := ref[p].isOpaque() && !hidden(ref, p)
		gop := got[p].isOpaque() && !hidden(got, p)
		if ro != gop && matters(p, true) && ref[p] != nil && got[p] != nil {
			out = append(out, fmt.Sprintf("%s: opaque dir in upper: want %v, got %v", p, ro, gop))
		}
	}
	return out
}

// modelMerge computes the merged view of lower layers (topmost first) by
// overlayfs' rules, read straight from the layer directories: for each
// name the topmost layer that has it wins; a whiteout hides the name; a
// directory merges with directories of the same name below it until a
// non-directory, a whiteout or an opaque directory ends the stack. It
// returns merged path -> the real path whose attributes the mount shows.
func modelMerge(lowers []string) (map[string]string, error) {
	out := map[string]string{".": lowers[0]}
	var merge func(rel string, dirs []string) error
	merge = func(rel string, dirs []string) error {
		names := map[string]bool{}
		for _, d := range dirs {
			des, err := os.ReadDir(d)
			if err != nil {
				return err
			}
			for _, de := range des {
				names[de.Name()] = true
			}
		}
		var sorted []string
		for n := range names {
			sorted = append(sorted, n)
		}
		sort.Strings(sorted)
		for _, n := range sorted {
			var chain []string
			for _, d := range dirs {
				p := filepath.Join(d, n)
				var st unix.Stat_t
				if err := unix.Lstat(p, &st); err != nil {
					if errors.Is(err, unix.ENOENT) {
						continue
					}
					return err
				}
				isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
				if len(chain) == 0 && !isDir {
					if fileType(st.Mode, st.Rdev) != "whiteout" {
						out[path.Join(rel, n)] = p
					}
					break
				}
				if !isDir {
					break
				}
				chain = append(chain, p)
				if v, err := getXattr(p, xattrOpaque); err == nil && v == "y" {
					break
				}
			}
			if len(chain) > 0 {
				child := path.Join(rel, n)
				out[child] = chain[0]
				if err := merge(child, chain); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return out, merge(".", lowers)
}

// modelTree is the tree a correct overlay of lowers shows.
func modelTree(lowers []string) (tree, error) {
	m, err := modelMerge(lowers)
	if err != nil {
		return nil, err
	}
	t := tree{}
	for rel, real := range m {
		e, _, err := readEntry(real)
		if err != nil {
			return nil, err
		}
		for k := range e.Xattrs {
			if strings.HasPrefix(k, xattrOverlayPrefix) {
				delete(e.Xattrs, k)
			}
		}
		t[rel] = e
	}
	return t, nil
}

// sortedPaths lists the paths of both trees once, in order.
func sortedPaths(a, b tree) []string {
	paths := map[string]bool{}
	for p := range a {
		paths[p] = true
	}
	for p := range b {
		paths[p] = true
	}
	sorted := make([]string, 0, len(paths))
	for p := range paths {
		sorted = append(sorted, p)
	}
	sort.Strings(sorted)
	return sorted
}
