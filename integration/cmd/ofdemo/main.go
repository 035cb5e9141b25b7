// Command ofdemo starts a private containerd with the overlayfuse daemon,
// imports the test image, runs a container on overlayfuse that prints its
// root mount, and tears everything down again (also on ^C or failure).
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/overlayfuse/overlayfuse/integration/harness"
	"github.com/overlayfuse/overlayfuse/integration/image"
)

func main() {
	bin := flag.String("bin", "integration/.cache/bin", "directory with containerd, ctr, shim, nerdctl")
	daemon := flag.String("daemon", "integration/.cache/bin/containerd-overlay-grpc", "containerd-overlay-grpc binary")
	config := flag.String("config", "config.toml.example", "containerd config")
	tarPath := flag.String("image", "integration/.cache/images/cases.tar", "image tar to import")
	flag.Parse()

	e, err := harness.New(harness.Options{BinDir: *bin, Daemon: *daemon, ConfigExa: *config, Verbose: os.Stdout})
	if err != nil {
		fail(err)
	}
	e.CloseOnSignal()
	err = run(e, *tarPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s\n", e.Logs(30))
	}
	fmt.Println("== stopping containerd and the daemon, removing", e.Dir)
	if cerr := e.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		fail(err)
	}
	fmt.Println("== done, nothing left behind")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "ofdemo:", err)
	os.Exit(1)
}

func run(e *harness.Env, tarPath string) error {
	fmt.Println("== private containerd and containerd-overlay-grpc in", e.Dir)
	if err := e.Start(); err != nil {
		return err
	}
	steps := [][]string{
		{"images", "import", "--snapshotter", "overlayfuse", tarPath},
		{"images", "ls", "-q"},
		{"run", "--rm", "--snapshotter", "overlayfuse", image.CasesName, "demo", "/bin/sh", "-c",
			"echo '-- root mount, from inside the container:'; head -1 /proc/self/mountinfo; mount | grep ' / '; " +
				"echo '-- ls /data:'; ls -l /data"},
	}
	for _, s := range steps {
		out, err := e.Ctr(s...)
		if err != nil {
			return err
		}
		fmt.Print(out)
	}
	// containerd's garbage collector removes the snapshot (and so ends its
	// FUSE mount) shortly after the container is deleted.
	var (
		ms  []string
		err error
	)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if ms, err = e.Mounts(); err != nil || len(ms) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return err
	}
	fmt.Printf("== mounts left under %s after the container was removed: %d %s\n", e.Dir, len(ms), strings.Join(ms, " "))
	return nil
}
