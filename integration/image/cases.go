package image

import (
	"fmt"
	"os"
	"strings"
)

// Names of the test images.
const (
	CasesName = "docker.io/overlayfuse/cases:latest"
	LargeName = "docker.io/overlayfuse/large:latest"
)

// BusyboxPath is busybox-static from Debian (apt-get install busybox-static).
const BusyboxPath = "/bin/busybox"

// applets get a /bin symlink to busybox in the base layer.
var applets = []string{
	"sh", "ash", "cat", "chmod", "cp", "echo", "find", "grep", "head", "id", "ln",
	"ls", "mkdir", "mount", "mv", "printf", "readlink", "rm", "rmdir", "sed",
	"sleep", "sort", "stat", "sync", "tail", "test", "[", "touch", "true", "false", "wc",
}

// Base returns the base layer: a busybox root with the usual top directories.
func Base() (Layer, error) {
	bb, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return nil, fmt.Errorf("read busybox (apt-get install busybox-static): %w", err)
	}
	l := Layer{Dir("bin", 0o755), File("bin/busybox", string(bb), 0o755)}
	for _, a := range applets {
		l = append(l, Symlink("bin/"+a, "busybox"))
	}
	for _, d := range []string{"dev", "etc", "proc", "root", "run", "sys", "var"} {
		l = append(l, Dir(d, 0o755))
	}
	l = append(l,
		Dir("tmp", 0o1777),
		File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n", 0o644),
		File("etc/group", "root:x:0:\nuser:x:1000:\n", 0o644),
	)
	return l, nil
}

// CasesLayers returns the base layer and three layers over /data that delete
// files and directories, make a directory opaque, re-add deleted entries,
// overwrite files, and hold hard links, symlinks, special modes and owners.
func CasesLayers() ([]Layer, error) {
	base, err := Base()
	if err != nil {
		return nil, err
	}
	l1 := Layer{
		Dir("data", 0o755),
		File("data/keep.txt", "keep", 0o644),
		File("data/delete-me.txt", "delete me", 0o644),
		Dir("data/deldir", 0o755),
		File("data/deldir/a", "a", 0o644),
		Dir("data/deldir/sub", 0o755),
		File("data/deldir/sub/b", "b", 0o644),
		Dir("data/opaque", 0o755),
		File("data/opaque/old1", "old1", 0o644),
		Dir("data/opaque/oldsub", 0o755),
		File("data/opaque/oldsub/old2", "old2", 0o644),
		File("data/readd.txt", "original", 0o644),
		File("data/overwrite.txt", "v1", 0o644),
		Dir("data/dir2file", 0o755),
		File("data/dir2file/x", "x", 0o644),
		File("data/file2dir", "file", 0o644),
	}
	l2 := Layer{
		Dir("data", 0o755),
		Whiteout("data", "delete-me.txt"),
		Whiteout("data", "deldir"),
		Dir("data/opaque", 0o755),
		Opaque("data/opaque"),
		File("data/opaque/new1", "new1", 0o644),
		Whiteout("data", "readd.txt"),
		File("data/overwrite.txt", "v2", 0o644),
		File("data/hard1", "linked", 0o644),
		Hardlink("data/hard2", "data/hard1"),
		Symlink("data/sym", "keep.txt"),
		Symlink("data/abssym", "/data/keep.txt"),
		Symlink("data/dangling", "nowhere"),
		File("data/secret", "secret", 0o600).owned(1000, 1000),
		File("data/suid", "#!/bin/sh", 0o4755),
		Dir("data/owned", 0o750).owned(1234, 5678),
		File("data/owned/file", "owned", 0o640).owned(1234, 5678),
		File("data/dir2file", "now a file", 0o644),
		Dir("data/file2dir", 0o755),
		File("data/file2dir/inner", "inner", 0o644),
	}
	l3 := Layer{
		Dir("data", 0o755),
		File("data/readd.txt", "readded", 0o644),
		File("data/overwrite.txt", "v3", 0o640).owned(42, 42),
		Dir("data/deldir", 0o700),
		File("data/deldir/fresh", "fresh", 0o644),
		Dir("data/opaque", 0o755),
		File("data/opaque/new2", "new2", 0o644),
	}
	return []Layer{base, l1, l2, l3}, nil
}

// CheckScript, run by /bin/sh in a container of the cases image, lists /data:
// "path d mode uid:gid", "path l target" or "path f mode uid:gid nlink data".
const CheckScript = `cd /data || exit 1
find . | sort | while read -r f; do
  case "$(stat -c %F "$f")" in
    directory) echo "$f d $(stat -c '%a %u:%g' "$f")" ;;
    "symbolic link") echo "$f l $(readlink "$f")" ;;
    *) echo "$f f $(stat -c '%a %u:%g %h' "$f") $(cat "$f")" ;;
  esac
done
if [ "$(stat -c %i hard1)" = "$(stat -c %i hard2)" ]; then echo "hardlink same"; else echo "hardlink different"; fi
[ -x /bin/sh ] && echo "sh ok"
`

// CasesExpected is what CheckScript must print for the cases image.
var CasesExpected = strings.Join([]string{
	". d 755 0:0",
	"./abssym l /data/keep.txt",
	"./dangling l nowhere",
	"./deldir d 700 0:0",
	"./deldir/fresh f 644 0:0 1 fresh",
	"./dir2file f 644 0:0 1 now a file",
	"./file2dir d 755 0:0",
	"./file2dir/inner f 644 0:0 1 inner",
	"./hard1 f 644 0:0 2 linked",
	"./hard2 f 644 0:0 2 linked",
	"./keep.txt f 644 0:0 1 keep",
	"./opaque d 755 0:0",
	"./opaque/new1 f 644 0:0 1 new1",
	"./opaque/new2 f 644 0:0 1 new2",
	"./overwrite.txt f 640 42:42 1 v3",
	"./owned d 750 1234:5678",
	"./owned/file f 640 1234:5678 1 owned",
	"./readd.txt f 644 0:0 1 readded",
	"./secret f 600 1000:1000 1 secret",
	"./suid f 4755 0:0 1 #!/bin/sh",
	"./sym l keep.txt",
	"hardlink same",
	"sh ok",
}, "\n") + "\n"

// LargeLayers returns the base layer and one layer of n small files, spread
// over directories of 200 files, under /many.
func LargeLayers(n int) ([]Layer, error) {
	base, err := Base()
	if err != nil {
		return nil, err
	}
	l := Layer{Dir("many", 0o755)}
	for i := 0; i < n; i++ {
		d := fmt.Sprintf("many/d%03d", i/200)
		if i%200 == 0 {
			l = append(l, Dir(d, 0o755))
		}
		l = append(l, File(fmt.Sprintf("%s/f%05d", d, i), fmt.Sprintf("file %d\n", i), 0o644))
	}
	return []Layer{base, l}, nil
}
