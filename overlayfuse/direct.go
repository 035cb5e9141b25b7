package overlayfuse

import (
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// O_DIRECT I/O on the backing file wants sector-aligned memory, which
// go-fuse's request buffers are not; such I/O goes through page-aligned
// bounce buffers. The offset and length are the caller's, and the backing
// filesystem judges them as it would for a direct caller.

const alignment = 4096

func aligned(b []byte) bool {
	return len(b) == 0 || uintptr(unsafe.Pointer(&b[0]))%alignment == 0
}

// maxDirect covers the largest FUSE request (MaxWrite).
const maxDirect = 1 << 20

var alignedPool = sync.Pool{New: func() any {
	b, err := unix.Mmap(-1, 0, maxDirect, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil
	}
	return &b
}}

func getAligned(n int) []byte {
	if n <= maxDirect {
		if p, ok := alignedPool.Get().(*[]byte); ok && p != nil {
			return *p
		}
	}
	// Larger than any request, or no mapping to be had: over-allocate and
	// align by hand.
	b := make([]byte, n+alignment)
	off := int(alignment - uintptr(unsafe.Pointer(&b[0]))%alignment)
	return b[off%alignment : off%alignment+n]
}

func putAligned(b []byte) {
	if cap(b) == maxDirect {
		b = b[:maxDirect]
		alignedPool.Put(&b)
	}
}
