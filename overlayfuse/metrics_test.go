package overlayfuse

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// recorder is a Metrics that keeps everything it is told.
type recorder struct {
	mu          sync.Mutex
	ops         map[string]int
	errs        map[string]int // op/errno
	opTime      time.Duration
	copyUps     int
	copyBytes   int64
	passthrough int
	served      int
}

func newRecorder() *recorder {
	return &recorder{ops: map[string]int{}, errs: map[string]int{}}
}

func (r *recorder) Op(op string, d time.Duration, errno syscall.Errno) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops[op]++
	r.opTime += d
	if errno != 0 {
		r.errs[op+"/"+errno.Error()]++
	}
}

func (r *recorder) CopyUp(bytes int64, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.copyUps++
	r.copyBytes += bytes
}

func (r *recorder) Open(passthrough bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if passthrough {
		r.passthrough++
	} else {
		r.served++
	}
}

// TestMetricsHook runs a known workload on a real mount and checks what
// the hook was told: one CREATE per new file, one copy-up (with its
// bytes) per lower file opened for writing, every open by mode, and the
// errno of a failed request.
func TestMetricsHook(t *testing.T) {
	const creates, lowerFiles, size = 5, 3, 1000
	for _, pt := range []Passthrough{PassthroughOff, PassthroughOn} {
		t.Run(string(pt), func(t *testing.T) {
			lowers, upper, work := newLayers(t, 1)
			for i := 0; i < lowerFiles; i++ {
				writeFile(t, filepath.Join(lowers[0], "l"+itoa(i)), strings.Repeat("x", size), 0o644)
			}
			must(t, os.Mkdir(filepath.Join(lowers[0], "dir"), 0o755))
			writeFile(t, filepath.Join(lowers[0], "dir", "f"), "", 0o644)
			rec := newRecorder()
			m := mountLayers(t, lowers, upper, work, Options{Passthrough: pt, Metrics: rec})

			for i := 0; i < creates; i++ {
				writeFile(t, m.path("new"+itoa(i)), "data", 0o644)
			}
			for i := 0; i < lowerFiles; i++ {
				f, err := os.OpenFile(m.path("l"+itoa(i)), os.O_WRONLY|os.O_APPEND, 0)
				must(t, err)
				must(t, f.Close())
			}
			wantErrno(t, syscall.Rmdir(m.path("dir")), syscall.ENOTEMPTY, "rmdir of a full directory")

			rec.mu.Lock()
			defer rec.mu.Unlock()
			if got := rec.ops["CREATE"]; got != creates {
				t.Errorf("CREATE ops = %d, want %d (all: %v)", got, creates, rec.ops)
			}
			if got := rec.ops["OPEN"]; got != lowerFiles {
				t.Errorf("OPEN ops = %d, want %d (all: %v)", got, lowerFiles, rec.ops)
			}
			if got := rec.errs["RMDIR/"+syscall.ENOTEMPTY.Error()]; got != 1 {
				t.Errorf("RMDIR ENOTEMPTY = %d, want 1 (errors: %v)", got, rec.errs)
			}
			if rec.opTime <= 0 {
				t.Errorf("ops took %v in all", rec.opTime)
			}
			if rec.copyUps != lowerFiles || rec.copyBytes != lowerFiles*size {
				t.Errorf("copy-ups %d of %d bytes, want %d of %d", rec.copyUps, rec.copyBytes, lowerFiles, lowerFiles*size)
			}
			wantPT, wantServed := 0, creates+lowerFiles
			if pt == PassthroughOn {
				wantPT, wantServed = wantServed, 0
			}
			if rec.passthrough != wantPT || rec.served != wantServed {
				t.Errorf("opens: %d passthrough, %d served; want %d, %d", rec.passthrough, rec.served, wantPT, wantServed)
			}
		})
	}
}
