package metrics

import (
	"syscall"
	"testing"
	"time"
)

// BenchmarkOp is what a metered FUSE request pays on top of its work:
// the two clock reads of the overlay's wrapper and the observation.
func BenchmarkOp(b *testing.B) {
	m := New()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			t := time.Now()
			m.Op("LOOKUP", time.Since(t), 0)
		}
	})
}

// BenchmarkOpError adds the error counter, as a failed request does.
func BenchmarkOpError(b *testing.B) {
	m := New()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			t := time.Now()
			m.Op("GETXATTR", time.Since(t), syscall.ENODATA)
		}
	})
}
