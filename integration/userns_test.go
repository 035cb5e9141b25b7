package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/overlayfuse/overlayfuse/integration/harness"
	"github.com/overlayfuse/overlayfuse/integration/image"
)

// User namespaces: nerdctl --userns-remap and the client's remapper labels
// (what the CRI plugin sets for pods with hostUsers: false) on our
// snapshotter, each compared with containerd's overlayfs snapshotter in the
// same containerd; and the client's chowned copy where remap-ids is left
// out of the config.

const (
	baseA = 200000
	baseB = 300000
)

// compared are the snapshotters a test runs the same steps on: the one
// under test, and containerd's overlayfs as the reference.
func compared() []string {
	if snapshotter == "overlayfs" {
		return []string{"overlayfs"}
	}
	return []string{snapshotter, "overlayfs"}
}

// usernsScript runs inside a container of the cases image as its root: who
// it is, the owners it sees, and writes whose owners the host checks.
func usernsScript(name string) string {
	return `id -u; id -g
stat -c '%u:%g %n' / /etc/passwd /data/owned/file /data/secret /data/hard1 /data/hard2
echo x > /created-` + name + ` && mkdir /newdir && chown 1000:1000 /newdir && echo y >> /data/keep.txt
stat -c '%u:%g %n' /created-` + name + ` /newdir /data/keep.txt
`
}

const usernsExpected = `0
0
0:0 /
0:0 /etc/passwd
1234:5678 /data/owned/file
1000:1000 /data/secret
0:0 /data/hard1
0:0 /data/hard2
0:0 /created-%[1]s
1000:1000 /newdir
0:0 /data/keep.txt
`

// addRemapUser creates a system user whose subordinate ids start at base,
// for nerdctl --userns-remap, and removes it and its /etc/subuid and
// /etc/subgid entries when the test ends.
func addRemapUser(t *testing.T, base int) string {
	t.Helper()
	name := fmt.Sprintf("ofuns%d-%d", base, os.Getpid())
	run := func(args ...string) error {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	// usermod refuses subordinate ids without the files.
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		if _, err := os.Stat(f); os.IsNotExist(err) {
			if err := os.WriteFile(f, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(f) })
		}
	}
	if err := run("useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := run("userdel", name); err != nil {
			t.Error(err)
		}
		for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
			if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), name+":") {
				t.Errorf("%s still holds %s", f, name)
			}
		}
	})
	r := fmt.Sprintf("%d-%d", base, base+65535)
	if err := run("usermod", "--add-subuids", r, "--add-subgids", r, name); err != nil {
		t.Fatal(err)
	}
	return name
}

// upperOwner is the owner of rel in the one upper dir of snapshotter sn
// that holds it.
func upperOwner(t *testing.T, e *harness.Env, sn, rel string) string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(e.SnapshotsDir(sn), "*", "fs", rel))
	if err != nil || len(m) != 1 {
		t.Fatalf("%s in the upper dirs of %s: %v %v, want one", rel, sn, m, err)
	}
	return ownerOf(t, m[0])
}

func ownerOf(t *testing.T, p string) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", st.Uid, st.Gid)
}

func ids(uid, gid int) string { return strconv.Itoa(uid) + ":" + strconv.Itoa(gid) }

// checkHostView checks the owners the host sees in a running container's
// root and in its upper dir.
func checkHostView(t *testing.T, e *harness.Env, sn, fullID, name string, base int) {
	t.Helper()
	rootfs := filepath.Join(e.State, "io.containerd.runtime.v2.task", e.Namespace, fullID, "rootfs")
	for p, want := range map[string]string{
		".":                  ids(base, base),
		"etc/passwd":         ids(base, base),
		"data/owned/file":    ids(base+1234, base+5678),
		"data/hard2":         ids(base, base),
		"created-" + name:    ids(base, base),
		"newdir":             ids(base+1000, base+1000),
		"data/keep.txt":      ids(base, base),
		"data/secret":        ids(base+1000, base+1000),
		"bin/busybox":        ids(base, base),
		"data/file2dir":      ids(base, base),
		"data/overwrite.txt": ids(base+42, base+42),
	} {
		if got := ownerOf(t, filepath.Join(rootfs, p)); got != want {
			t.Errorf("%s: host sees %s of %s owned by %s, want %s", sn, p, name, got, want)
		}
	}
	// What the container made lands in its upper dir with the host ids.
	if got := upperOwner(t, e, sn, "created-"+name); got != ids(base, base) {
		t.Errorf("%s: upper created-%s owned by %s, want %s", sn, name, got, ids(base, base))
	}
}

// nerdctl run --userns-remap: image files owned by root show as root inside
// and as the mapped ids outside; new files land in the upper dir with the
// mapped ids; a second container with another mapping on the same image
// sees the same; the same on containerd's overlayfs.
func TestNerdctlUsernsRemap(t *testing.T) {
	e := newEnv(t)
	users := map[int]string{baseA: addRemapUser(t, baseA), baseB: addRemapUser(t, baseB)}
	outputs := map[string]string{}
	for _, sn := range compared() {
		nerdctl := func(args ...string) string {
			t.Helper()
			out, err := e.Nerdctl(sn, args...)
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		nerdctl("load", "-i", casesTar)
		var inside []string
		for _, base := range []int{baseA, baseB} {
			c := id("uns-" + sn)
			t.Cleanup(func() { _, _ = e.Nerdctl(sn, "rm", "-f", c) })
			nerdctl("run", "-d", "--net", "none", "--userns-remap", users[base], "--name", c, image.CasesName, "sleep", "600")
			out := nerdctl("exec", c, "/bin/sh", "-c", usernsScript(c))
			sameLines(t, sn+" "+c+" inside", out, fmt.Sprintf(usernsExpected, c))
			out += nerdctl("exec", c, "/bin/sh", "-c", image.CheckScript)
			inside = append(inside, strings.ReplaceAll(out, c, "C"))
			fullID := strings.TrimSpace(nerdctl("inspect", "-f", "{{.ID}}", c))
			checkHostView(t, e, sn, fullID, c, base)
		}
		if inside[0] != inside[1] {
			sameLines(t, sn+": second mapping", inside[1], inside[0])
		}
		// The image layer's keep.txt, and each container's copy-up with
		// its own mapping.
		m, _ := filepath.Glob(filepath.Join(e.SnapshotsDir(sn), "*", "fs", "data", "keep.txt"))
		var owners []string
		for _, p := range m {
			owners = append(owners, ownerOf(t, p))
		}
		sort.Strings(owners)
		if want := "0:0 " + ids(baseA, baseA) + " " + ids(baseB, baseB); strings.Join(owners, " ") != want {
			t.Errorf("%s: keep.txt in the upper dirs owned by %v, want %s", sn, owners, want)
		}
		outputs[sn] = inside[0]
		// The image itself was neither chowned nor copied.
		out := nerdctl("run", "--rm", "--net", "none", image.CasesName, "/bin/sh", "-c", image.CheckScript)
		sameLines(t, sn+": a container without a mapping", out, image.CasesExpected)
	}
	if len(outputs) == 2 && outputs["overlayfs"] != outputs[snapshotter] {
		sameLines(t, "overlayfuse vs overlayfs", outputs[snapshotter], outputs["overlayfs"])
	}
}

// The client's remapper labels on a new snapshot (containerd.
// WithUserNSRemapperLabels, as the CRI plugin sets them for pods with user
// namespaces; here through ctr run --remap-labels) reach the snapshotter
// through the proxy: no chowned copy is made, and the container sees the
// image as root.
func TestRemapperLabels(t *testing.T) {
	e := newEnv(t)
	outputs := map[string]string{}
	for _, sn := range compared() {
		mustCtr(t, e, "images", "import", "--snapshotter", sn, casesTar)
		before := mustCtr(t, e, "snapshots", "--snapshotter", sn, "ls")
		c := id("labels-" + sn)
		t.Cleanup(func() { removeContainer(t, e, c) })
		m := fmt.Sprintf("0:%d:65536", baseA)
		mustCtr(t, e, "run", "-d", "--snapshotter", sn, "--remap-labels", "--uidmap", m, "--gidmap", m, image.CasesName, c, "sleep", "600")
		info := mustCtr(t, e, "snapshots", "--snapshotter", sn, "info", c)
		if !strings.Contains(info, `"containerd.io/snapshot/uidmapping": "`+m+`"`) {
			t.Errorf("%s: snapshot %s lacks the uidmapping label:\n%s", sn, c, info)
		}
		out := execIn(t, e, c, usernsScript(c))
		sameLines(t, sn+" inside", out, fmt.Sprintf(usernsExpected, c))
		out += execIn(t, e, c, image.CheckScript)
		outputs[sn] = strings.ReplaceAll(out, c, "C")
		checkHostView(t, e, sn, c, c, baseA)
		// One new snapshot, the container's: no chowned copy.
		after := mustCtr(t, e, "snapshots", "--snapshotter", sn, "ls")
		if n := len(strings.Split(after, "\n")) - len(strings.Split(before, "\n")); n != 1 {
			t.Errorf("%s: %d snapshots more, want the container's only:\n%s", sn, n, after)
		}
	}
	if len(outputs) == 2 && outputs["overlayfs"] != outputs[snapshotter] {
		sameLines(t, "overlayfuse vs overlayfs", outputs[snapshotter], outputs["overlayfs"])
	}
}

// Without remap-ids in the config (a kernel without idmapped FUSE mounts),
// containerd's client makes a chowned copy of the image, whose hard links
// the chown walk must meet unchanged; nerdctl refuses --userns-remap.
func TestChownedCopyWithoutRemapIDs(t *testing.T) {
	if snapshotter != "overlayfuse" {
		t.Skipf("the capability is the overlayfuse proxy's; snapshotter is %s (overlayfs runs inside as the reference)", snapshotter)
	}
	b, err := os.ReadFile(configExa)
	if err != nil {
		t.Fatal(err)
	}
	const capLine = `capabilities = ["remap-ids"]`
	if !strings.Contains(string(b), capLine) {
		t.Fatalf("%s lacks %s", configExa, capLine)
	}
	cfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(b), capLine, "", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, harness.Options{ConfigExa: cfg})
	user := addRemapUser(t, baseA)

	outputs := map[string]string{}
	m := fmt.Sprintf("0:%d:65536", baseA)
	for _, sn := range compared() {
		mustCtr(t, e, "images", "import", "--snapshotter", sn, casesTar)
		c := id("chown-" + sn)
		t.Cleanup(func() { removeContainer(t, e, c) })
		args := []string{"run", "-d", "--snapshotter", sn, "--uidmap", m, "--gidmap", m}
		if sn == snapshotter {
			// The labels, which the client turns into the chowned
			// copy for a snapshotter without remap-ids.
			args = append(args, "--remap-labels")
		}
		mustCtr(t, e, append(args, image.CasesName, c, "sleep", "600")...)
		out := execIn(t, e, c, "id -u; stat -c '%u:%g %n' /etc/passwd /data/owned/file /data/hard1 /data/hard2")
		sameLines(t, sn+" inside", out, "0\n0:0 /etc/passwd\n1234:5678 /data/owned/file\n0:0 /data/hard1\n0:0 /data/hard2\n")
		out += execIn(t, e, c, image.CheckScript)
		outputs[sn] = out
		rootfs := filepath.Join(e.State, "io.containerd.runtime.v2.task", e.Namespace, c, "rootfs")
		for p, want := range map[string]string{"etc/passwd": ids(baseA, baseA), "data/hard2": ids(baseA, baseA), "data/owned/file": ids(baseA+1234, baseA+5678)} {
			if got := ownerOf(t, filepath.Join(rootfs, p)); got != want {
				t.Errorf("%s: host sees %s owned by %s, want %s", sn, p, got, want)
			}
		}
		// The image is intact.
		out = mustCtr(t, e, "run", "--rm", "--snapshotter", sn, image.CasesName, id("plain"), "/bin/sh", "-c", image.CheckScript)
		sameLines(t, sn+": a container without a mapping", out, image.CasesExpected)
	}
	if outputs["overlayfs"] != outputs[snapshotter] {
		sameLines(t, "overlayfuse vs overlayfs", outputs[snapshotter], outputs["overlayfs"])
	}
	if _, err := e.Nerdctl(snapshotter, "run", "--rm", "--net", "none", "--userns-remap", user, image.CasesName, "true"); err == nil || !strings.Contains(err.Error(), "remap-ids") {
		t.Errorf("nerdctl --userns-remap without remap-ids: %v, want the capability refused", err)
	}
}

// nerdctl commit of a container in a user namespace: our differ computes
// the layer from the upper dir, which holds the mapped host ids, so the
// layer carries them, exactly as containerd's overlayfs snapshotter's does
// (its differ reads the same on-disk format).
func TestNerdctlCommitUserns(t *testing.T) {
	e := newEnv(t)
	user := addRemapUser(t, baseA)
	got := map[string]string{}
	for _, sn := range compared() {
		nerdctl := func(args ...string) string {
			t.Helper()
			out, err := e.Nerdctl(sn, args...)
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		nerdctl("load", "-i", casesTar)
		c := id("unscommit-" + sn)
		t.Cleanup(func() { _, _ = e.Nerdctl(sn, "rm", "-f", c) })
		nerdctl("run", "--net", "none", "--userns-remap", user, "--name", c, image.CasesName, "/bin/sh", "-c",
			"echo m > /made && mkdir /made-dir && chown 1000:1000 /made-dir && echo y >> /data/keep.txt")
		img := "docker.io/overlayfuse/unscommit-" + sn + ":latest"
		nerdctl("commit", c, img)
		got[sn] = nerdctl("run", "--rm", "--net", "none", img, "stat", "-c", "%u:%g %n", "/made", "/made-dir", "/data/keep.txt")
		t.Logf("%s: committed layer owners:\n%s", sn, got[sn])
	}
	want := fmt.Sprintf("%d:%d /made\n%d:%d /made-dir\n%d:%d /data/keep.txt\n", baseA, baseA, baseA+1000, baseA+1000, baseA, baseA)
	sameLines(t, snapshotter+": committed owners", got[snapshotter], want)
	if o, ok := got["overlayfs"]; ok {
		sameLines(t, "committed owners, overlayfuse vs overlayfs", got[snapshotter], o)
	}
}
