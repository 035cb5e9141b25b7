package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mounts lists the mount points under e.Dir, sorted.
func (e *Env) Mounts() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var ms []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescape(f[4])
		if mp == e.Dir || strings.HasPrefix(mp, e.Dir+"/") {
			ms = append(ms, mp)
		}
	}
	sort.Strings(ms)
	return ms, nil
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Close removes every container, stops containerd, the shims and the daemon,
// detaches every mount under e.Dir and removes it. It goes on past errors and
// returns the first; calling it twice is harmless.
func (e *Env) Close() error {
	if e.closed {
		return nil
	}
	e.closed = true
	errs := []error{e.stopBuildkitd()}
	if e.containerd != nil {
		errs = append(errs, e.removeContainers())
	}
	errs = append(errs, e.StopContainerd())
	errs = append(errs, e.killShims())
	errs = append(errs, e.StopDaemon(syscall.SIGTERM))
	errs = append(errs, e.endKeptMounts())
	errs = append(errs, e.unmountAll())
	// runc keeps its state under the host's /run/containerd/runc/<namespace>.
	_ = os.RemoveAll(filepath.Join("/run/containerd/runc", e.Namespace))
	RemoveCgroups(e.Namespace)
	if err := os.RemoveAll(e.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", e.Dir, err))
	}
	return errors.Join(errs...)
}

func (e *Env) removeContainers() error {
	out, err := e.Ctr("containers", "ls", "-q")
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range strings.Fields(out) {
		// The task may not exist: ignore kill errors, check the final rm.
		_, _ = e.Ctr("tasks", "kill", "-a", "-s", "SIGKILL", id)
		_, _ = e.Ctr("tasks", "rm", "-f", id)
		if _, err := e.Ctr("containers", "rm", id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killShims kills shims left by a failed run, and their containers first (a
// shim killed alone orphans them). The shims carry our socket path in their
// arguments, so no other containerd's shim matches.
func (e *Env) killShims() error {
	pids, err := PidsWithArg(e.Address)
	if err != nil {
		return err
	}
	// Our daemon has the socket in its arguments too (--containerd-address).
	shims := slices.DeleteFunc(pids, func(pid int) bool {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		arg0, _, _ := strings.Cut(string(b), "\x00")
		return err != nil || !strings.HasPrefix(filepath.Base(arg0), "containerd-shim")
	})
	if len(shims) == 0 {
		return nil
	}
	kids := descendants(shims)
	for _, pid := range append(kids, shims...) {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	return fmt.Errorf("killed %d leftover shim(s) %v and their processes %v", len(shims), shims, kids)
}

// descendants returns every process below the given ones.
func descendants(roots []int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
		var pid, ppid int
		var state string
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		if _, err := fmt.Sscanf(string(b[:bytes.IndexByte(b, ' ')]), "%d", &pid); err != nil {
			continue
		}
		if _, err := fmt.Sscanf(string(b[i+1:]), " %s %d", &state, &ppid); err != nil {
			continue
		}
		children[ppid] = append(children[ppid], pid)
	}
	var out []int
	queue := append([]int(nil), roots...)
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// PidsWithArg returns the processes one of whose arguments contains s.
func PidsWithArg(s string) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, ent := range ents {
		var pid int
		if _, err := fmt.Sscanf(ent.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, a := range strings.Split(string(b), "\x00") {
			if strings.Contains(a, s) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids, nil
}

// endKeptMounts ends the mounts a stopped daemon leaves to the next one,
// as an operator ends them for good; its keeper process exits with them.
func (e *Env) endKeptMounts() error {
	if e.opts.Daemon == "" {
		return nil
	}
	_, err := e.Run(time.Minute, e.opts.Daemon, "unmount-all", "--root", e.DaemonRoot)
	return err
}

// unmountAll detaches every mount under e.Dir, deepest first.
func (e *Env) unmountAll() error {
	ms, err := e.Mounts()
	if err != nil {
		return err
	}
	var errs []error
	for i := len(ms) - 1; i >= 0; i-- {
		if err := unix.Unmount(ms[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", ms[i], err))
		}
	}
	if len(ms) > 0 {
		errs = append(errs, fmt.Errorf("%d mount(s) were left behind: %v", len(ms), ms))
	}
	return errors.Join(errs...)
}

// RemoveCgroups removes the (empty) cgroups that runc made for namespace ns:
// /sys/fs/cgroup/<ns> (v2) or /sys/fs/cgroup/<controller>/<ns> (v1).
func RemoveCgroups(ns string) {
	tops, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", ns))
	more, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", ns))
	for _, top := range append(tops, more...) {
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			_ = unix.Rmdir(dirs[i]) // fails, harmlessly, while a process is inside
		}
	}
}

// CleanStale tears down what runs killed before their Close left behind
// (a test binary killed on timeout): private directories of the system temp
// dir that no live containerd or daemon uses any more, with their shims,
// containers, mounts and cgroups. Young directories are skipped: they may
// belong to a run that is starting right now.
func CleanStale() error {
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), "ofi-*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, dir := range dirs {
		fi, err := os.Stat(dir)
		if err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < time.Minute {
			continue
		}
		if pids, _ := PidsWithArg(filepath.Join(dir, "config.toml")); len(pids) > 0 {
			continue // its containerd runs
		}
		if pids, _ := PidsWithArg(filepath.Join(dir, "of.sock")); len(pids) > 0 {
			continue // its daemon runs
		}
		e := &Env{Dir: dir, Address: filepath.Join(dir, "containerd.sock"),
			Namespace: "ofi-" + strings.TrimPrefix(filepath.Base(dir), "ofi-"), closed: true}
		_ = e.killShims()
		// The daemon's keeper (its --root is in dir) holds its mounts.
		if pids, _ := PidsWithArg(filepath.Join(dir, "of")); len(pids) > 0 {
			for _, pid := range pids {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
		_ = e.unmountAll()
		_ = os.RemoveAll(filepath.Join("/run/containerd/runc", e.Namespace))
		RemoveCgroups(e.Namespace)
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// CloseOnSignal tears e down and exits 130 on SIGINT or SIGTERM, so a
// command never leaves containerd or mounts behind when interrupted.
func (e *Env) CloseOnSignal() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		e.Close()
		os.Exit(130)
	}()
}
