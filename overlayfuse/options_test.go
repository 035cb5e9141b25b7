package overlayfuse

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
)

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want string // "" for valid
	}{
		{"zero", Options{}, ""},
		{"all set", Options{Passthrough: PassthroughOff, Consistency: ConsistencyStrict, MountFlags: []string{"nosuid", "dev", "noexec"}}, ""},
		{"passthrough", Options{Passthrough: "yes"}, `passthrough="yes": want auto, on or off`},
		{"passthrough case", Options{Passthrough: "Auto"}, `passthrough="Auto": want auto, on or off`},
		{"consistency", Options{Consistency: "weak"}, `consistency="weak": want default or strict`},
		{"mount flag", Options{MountFlags: []string{"nosuid", "ro"}}, `mount flag "ro": want [no]suid, [no]dev or [no]exec`},
		{"empty mount flag", Options{MountFlags: []string{""}}, `mount flag "": want`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.opts.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
			if tc.want == "" {
				return
			}
			// Mount rejects it the same way, before touching anything.
			lowers, _, _ := newLayers(t, 1)
			mnt := t.TempDir()
			if _, err := Mount(mnt, Layers{Lower: lowers}, tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Mount = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestParseDefaults(t *testing.T) {
	if p, err := ParsePassthrough(""); p != PassthroughAuto || err != nil {
		t.Errorf(`ParsePassthrough("") = %q, %v`, p, err)
	}
	if c, err := ParseConsistency(""); c != ConsistencyDefault || err != nil {
		t.Errorf(`ParseConsistency("") = %q, %v`, c, err)
	}
	if c, err := ParseConsistency("strict"); c != ConsistencyStrict || err != nil {
		t.Errorf(`ParseConsistency("strict") = %q, %v`, c, err)
	}
}

// Mount changes no process-wide state: the umask and RLIMIT_NOFILE are
// the commands' to set (internal/procsetup).
func TestMountKeepsProcessState(t *testing.T) {
	testutil.RequireFUSE(t)
	var orig unix.Rlimit
	must(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &orig))
	low := orig
	low.Cur = min(orig.Max, 4096) - 1
	must(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &low))
	t.Cleanup(func() { must(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &orig)) })

	lowers, upper, work := newLayers(t, 1)
	m := mountLayers(t, lowers, upper, work, Options{})
	writeFile(t, m.path("f"), "x", 0o644)
	m.unmount(t)

	var now unix.Rlimit
	must(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &now))
	if now != low {
		t.Errorf("RLIMIT_NOFILE after Mount = %+v, want %+v", now, low)
	}
	if err := checkUmask(); err != nil {
		t.Errorf("umask after Mount: %v", err)
	}

	// A non-zero umask is refused, and left as it was.
	old := unix.Umask(0o022)
	t.Cleanup(func() { unix.Umask(old) })
	mnt := filepath.Join(t.TempDir(), "m")
	must(t, os.Mkdir(mnt, 0o755))
	srv, err := Mount(mnt, Layers{Lower: lowers, Upper: upper, Work: work}, Options{})
	if err == nil {
		_ = srv.Unmount() // best effort: the test has failed already
		t.Fatal("Mount under umask 022 succeeded")
	}
	if !strings.Contains(err.Error(), "umask is 0022, want 0") {
		t.Errorf("Mount under umask 022: %v", err)
	}
	if got := unix.Umask(0o022); got != 0o022 {
		t.Errorf("umask after a refused Mount = %04o, want 0022", got)
	}
}
