// Command ofbench times image import/unpack, container start, nerdctl
// commit and a BuildKit Go build through the overlayfuse proxy snapshotter
// against containerd's built-in overlayfs snapshotter, in one private
// containerd, and prints the ratios.
//
//	ofbench -bin integration/.cache/bin -daemon bin/containerd-overlay-grpc \
//	        -image integration/.cache/images/large.tar
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/overlayfuse/overlayfuse/integration/harness"
	"github.com/overlayfuse/overlayfuse/integration/image"
)

func main() {
	bin := flag.String("bin", "integration/.cache/bin", "directory with containerd, ctr, shim")
	daemon := flag.String("daemon", "", "containerd-overlay-grpc binary (empty: overlayfs only)")
	config := flag.String("config", "config.toml.example", "containerd config")
	tarPath := flag.String("image", "integration/.cache/images/large.tar", "large image tar")
	n := flag.Int("n", 5, "repetitions of each measure (starts: 2n)")
	builds := flag.Bool("builds", true, "also time nerdctl commit and nerdctl build (BuildKit)")
	only := flag.String("only", "", "regexp: run only the measures whose name matches")
	flag.Parse()
	match, err := regexp.Compile(*only)
	if err != nil {
		fail(fmt.Errorf("-only: %w", err))
	}

	sns := []string{"overlayfs"}
	if *daemon != "" {
		sns = append(sns, "overlayfuse")
	}
	e, err := harness.New(harness.Options{BinDir: *bin, Daemon: *daemon, ConfigExa: *config})
	if err != nil {
		fail(err)
	}
	e.CloseOnSignal()
	err = run(e, sns, *tarPath, *n, *builds, match)
	if cerr := e.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "ofbench:", err)
	os.Exit(1)
}

type measure struct {
	name string
	run  func(e *harness.Env, sn string) (time.Duration, error)
}

func run(e *harness.Env, sns []string, tarPath string, n int, builds bool, match *regexp.Regexp) error {
	if err := e.Start(); err != nil {
		return fmt.Errorf("%w\n%s", err, e.Logs(40))
	}
	// The build setup comes after the measures that clean: its images and
	// BuildKit's cache would keep the snapshot directories from emptying.
	var (
		hosts map[string]string
		goCtx string
	)
	setup := func() error {
		if hosts != nil {
			return nil
		}
		var err error
		hosts, goCtx, err = setupBuilds(e, sns)
		return err
	}
	seq := 0
	timed := func(f func() error) (time.Duration, error) {
		t0 := time.Now()
		err := f()
		return time.Since(t0), err
	}
	// Each import starts from an empty store: remove the image, then wait
	// for the snapshotters' background cleanup, so that no timed run pays
	// for deleting the previous run's 20,000 files.
	clean := func() {
		_, _ = e.Ctr("images", "rm", "--sync", image.LargeName)
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			busy := false
			for _, sn := range sns {
				if ents, _ := os.ReadDir(e.SnapshotsDir(sn)); len(ents) > 0 {
					busy = true
				}
			}
			if !busy {
				return
			}
		}
	}
	measures := []measure{
		{"import (content + unpack)", func(e *harness.Env, sn string) (time.Duration, error) {
			clean()
			return timed(func() error {
				_, err := e.Ctr("images", "import", "--snapshotter", sn, tarPath)
				return err
			})
		}},
		// ctr 2.x has no "images unpack": "images mount" unpacks (client
		// side, the diff service's applier), prepares and mounts.
		{"unpack+mount (ctr images mount)", func(e *harness.Env, sn string) (time.Duration, error) {
			clean()
			if _, err := e.Ctr("images", "import", "--no-unpack", tarPath); err != nil {
				return 0, err
			}
			seq++
			target := filepath.Join(e.Dir, fmt.Sprintf("mnt%d", seq))
			if err := os.Mkdir(target, 0o755); err != nil {
				return 0, err
			}
			d, err := timed(func() error {
				_, err := e.Ctr("images", "mount", "--snapshotter", sn, image.LargeName, target)
				return err
			})
			if _, uerr := e.Ctr("images", "unmount", "--snapshotter", sn, "--rm", target); uerr != nil && err == nil {
				err = uerr
			}
			return d, err
		}},
		{"start (ctr run --rm true)", func(e *harness.Env, sn string) (time.Duration, error) {
			seq++
			return timed(func() error {
				_, err := e.Ctr("run", "--rm", "--snapshotter", sn, image.LargeName, fmt.Sprintf("b%d", seq), "true")
				return err
			})
		}},
		// A user namespace: with remap-ids (the example config's) the
		// container's snapshot is idmapped; the mapping must cost nothing.
		{"start, user namespace (idmapped)", func(e *harness.Env, sn string) (time.Duration, error) {
			seq++
			return timed(func() error {
				_, err := e.Ctr("run", "--rm", "--snapshotter", sn, "--remap-labels", "--uidmap", idMap, "--gidmap", idMap,
					image.LargeName, fmt.Sprintf("b%d", seq), "true")
				return err
			})
		}},
		// What a user namespace costs without remap-ids: the client's
		// chowned copy of the image (every file copied up). Each run maps
		// elsewhere, as the client reuses a copy of the same mapping, and
		// the copy is removed afterwards.
		{"start, user namespace (chowned copy)", func(e *harness.Env, sn string) (time.Duration, error) {
			seq++
			before, err := snapshotKeys(e, sn)
			if err != nil {
				return 0, err
			}
			m := fmt.Sprintf("0:%d:65536", 1000000+seq*65536)
			d, err := timed(func() error {
				_, err := e.Ctr("run", "--rm", "--snapshotter", sn, "--uidmap", m, "--gidmap", m,
					image.LargeName, fmt.Sprintf("b%d", seq), "true")
				return err
			})
			after, kerr := snapshotKeys(e, sn)
			if kerr != nil && err == nil {
				err = kerr
			}
			for k := range after {
				if _, ok := before[k]; !ok && err == nil {
					_, err = e.Ctr("snapshots", "--snapshotter", sn, "rm", k)
				}
			}
			return d, err
		}},
		{"find+cat 20k files in container", func(e *harness.Env, sn string) (time.Duration, error) {
			seq++
			return timed(func() error {
				_, err := e.Ctr("run", "--rm", "--snapshotter", sn, image.LargeName, fmt.Sprintf("b%d", seq),
					"sh", "-c", "find /many -type f | wc -l && cat /many/*/* | wc -c")
				return err
			})
		}},
	}
	medians := map[string]map[string]time.Duration{}
	if builds {
		measures = append(measures,
			measure{"nerdctl commit, 20,000 new files", func(e *harness.Env, sn string) (time.Duration, error) {
				seq++
				c := fmt.Sprintf("c%d", seq)
				ref := fmt.Sprintf("docker.io/overlayfuse/commit%d:latest", seq)
				// The next measure must not pay for deleting these 40,000
				// files (containerd's garbage collector does it later).
				before := snapshotCounts(e, sns)
				defer func() {
					_, _ = e.Nerdctl(sn, "rm", "-f", c)
					_, _ = e.Nerdctl(sn, "rmi", ref)
					settle(e, sns, before)
				}()
				if _, err := e.Nerdctl(sn, "run", "--net", "none", "--name", c, image.LargeName, "cp", "-a", "/many", "/copy"); err != nil {
					return 0, err
				}
				return timed(func() error {
					_, err := e.Nerdctl(sn, "commit", c, ref)
					return err
				})
			}},
			measure{"nerdctl build, Go module, cold", func(e *harness.Env, sn string) (time.Duration, error) {
				if err := setup(); err != nil {
					return 0, err
				}
				return timed(func() error { return build(e, sn, hosts[sn], goCtx, "--no-cache") })
			}},
			measure{"nerdctl build, Go module, cached", func(e *harness.Env, sn string) (time.Duration, error) {
				if err := setup(); err != nil {
					return 0, err
				}
				return timed(func() error { return build(e, sn, hosts[sn], goCtx) })
			}},
		)
	}
	fmt.Printf("ofbench: %s, %d runs each (median), snapshotters %v\n", tarPath, n, sns)
	fmt.Printf("%-34s %12s %12s %8s\n", "measure", "overlayfs", "overlayfuse", "ratio")
	for _, m := range measures {
		if !match.MatchString(m.name) {
			continue
		}
		reps := n
		if strings.HasPrefix(m.name, "start") && !strings.Contains(m.name, "chowned") {
			reps = 2 * n
		}
		res := map[string][]time.Duration{}
		for _, sn := range sns {
			// Make sure the image is unpacked for the run measures.
			if _, err := e.Ctr("images", "import", "--snapshotter", sn, tarPath); err != nil {
				return err
			}
		}
		for i := 0; i < reps; i++ {
			for _, sn := range sns { // alternate, so drift hits both alike
				d, err := m.run(e, sn)
				if err != nil {
					return fmt.Errorf("%s on %s: %w\n%s", m.name, sn, err, e.Logs(40))
				}
				res[sn] = append(res[sn], d)
			}
		}
		medians[m.name] = map[string]time.Duration{}
		for sn, d := range res {
			medians[m.name][sn] = median(d)
		}
		base := median(res["overlayfs"])
		line := fmt.Sprintf("%-34s %10.1fms", m.name, ms(base))
		if d, ok := res["overlayfuse"]; ok {
			of := median(d)
			line += fmt.Sprintf(" %10.1fms %7.2fx", ms(of), float64(of)/float64(base))
		}
		fmt.Println(line)
	}
	fmt.Println("target: overlayfuse within 1.5x of overlayfs; commit faster, builds within 1.2x")
	for _, sn := range sns {
		plain, mapped := medians["start (ctr run --rm true)"][sn], medians["start, user namespace (idmapped)"][sn]
		fmt.Printf("%s: start with a mapping / without: %.2fx; chowned copy / without: %.2fx\n", sn,
			float64(mapped)/float64(plain), float64(medians["start, user namespace (chowned copy)"][sn])/float64(plain))
	}
	return nil
}

// idMap is the user namespace of the idmapped start.
const idMap = "0:200000:65536"

// snapshotKeys lists the snapshots of sn.
func snapshotKeys(e *harness.Env, sn string) (map[string]bool, error) {
	out, err := e.Ctr("snapshots", "--snapshotter", sn, "ls")
	if err != nil {
		return nil, err
	}
	keys := map[string]bool{}
	for i, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); i > 0 && len(f) > 0 {
			keys[f[0]] = true
		}
	}
	return keys, nil
}

// snapshotCounts returns the number of snapshot directories of each
// snapshotter.
func snapshotCounts(e *harness.Env, sns []string) map[string]int {
	n := map[string]int{}
	for _, sn := range sns {
		ents, _ := os.ReadDir(e.SnapshotsDir(sn))
		n[sn] = len(ents)
	}
	return n
}

// settle waits, for at most two minutes, until no snapshotter has more
// snapshot directories than before.
func settle(e *harness.Env, sns []string, before map[string]int) {
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		done := true
		for sn, n := range snapshotCounts(e, sns) {
			done = done && n <= before[sn]
		}
		if done {
			return
		}
	}
}

// setupBuilds starts a buildkitd per snapshotter, loads the Go toolchain
// image (the host's GOROOT) on each, and writes the Go module's build
// context; it returns the buildkitd addresses and the context directory.
func setupBuilds(e *harness.Env, sns []string) (map[string]string, string, error) {
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return nil, "", fmt.Errorf("go env GOROOT: %w", err)
	}
	layers, err := image.GoLayers(strings.TrimSpace(string(goroot)))
	if err != nil {
		return nil, "", err
	}
	goTar := filepath.Join(e.Dir, "go.tar")
	f, err := os.Create(goTar)
	if err != nil {
		return nil, "", err
	}
	err = image.Write(f, image.GoName, layers, []string{"/bin/sh"})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, "", err
	}
	dir := filepath.Join(e.Dir, "goctx")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, "", err
	}
	files := map[string]string{"Dockerfile": image.GoDockerfile}
	for name, data := range image.GoModule {
		files[name] = data
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			return nil, "", err
		}
	}
	hosts := map[string]string{}
	for _, sn := range sns {
		if hosts[sn], err = e.StartBuildkitd(sn); err != nil {
			return nil, "", err
		}
		if _, err := e.Nerdctl(sn, "load", "-i", goTar); err != nil {
			return nil, "", err
		}
		// The first build fills the cache of the "cached" measure.
		if err := build(e, sn, hosts[sn], dir); err != nil {
			return nil, "", err
		}
	}
	return hosts, dir, nil
}

// build builds the Go module's Dockerfile with nerdctl build.
func build(e *harness.Env, sn, host, dir string, args ...string) error {
	args = append([]string{"--pull=false", "--progress=plain", "-t", "docker.io/overlayfuse/hello:latest"}, args...)
	_, err := e.NerdctlBuild(15*time.Minute, sn, host, append(args, dir)...)
	return err
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
