package overlayfuse

import (
	"bytes"
	"errors"
	"log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// syncBuffer is a log sink for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestPanicAnsweredEIO: a panic while serving one request answers that
// request EIO and is logged with the mount and the operation; the mount
// and another mount go on.
func TestPanicAnsweredEIO(t *testing.T) {
	var logs syncBuffer
	opts := Options{Logger: log.New(&logs, "", 0)}
	var mounts []*testMount
	for i := 0; i < 2; i++ {
		lowers, upper, work := newLayers(t, 1)
		writeFile(t, filepath.Join(lowers[0], "f"), "data", 0o644)
		mounts = append(mounts, mountLayers(t, lowers, upper, work, opts))
	}
	a, b := mounts[0], mounts[1]
	a.srv.ofs.panicName = "boom"

	_, err := os.Stat(a.path("boom"))
	if !errors.Is(err, unix.EIO) {
		t.Fatalf("stat of the name whose lookup panics: %v, want EIO", err)
	}
	if got := logs.String(); !strings.Contains(got, a.dir) || !strings.Contains(got, "panic in LOOKUP") {
		t.Errorf("log %q names neither the mount nor the operation", got)
	}
	for _, m := range []*testMount{a, b} {
		if data, err := os.ReadFile(m.path("f")); err != nil || string(data) != "data" {
			t.Errorf("%s after the panic: %q %v", m.dir, data, err)
		}
		writeFile(t, m.path("g"), "new", 0o644)
	}
}
