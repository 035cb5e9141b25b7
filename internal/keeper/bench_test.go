package keeper

import (
	"testing"

	"github.com/overlayfuse/overlayfuse/internal/testutil"
	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// The cost a mount's start adds: keeping its two files in the holder (and
// dropping them at its end).
func BenchmarkHolderKeepDrop(b *testing.B) {
	testutil.RequireRoot(b)
	root := b.TempDir()
	h, err := DialHolder(root, startSelf(root))
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	dev, state := tempFile(b, "dev"), tempFile(b, "state")
	ho := overlayfuse.Handover{Dev: dev, State: state}
	for b.Loop() {
		if err := h.Keep("1@42", ho); err != nil {
			b.Fatal(err)
		}
		if err := h.Drop("1@42"); err != nil {
			b.Fatal(err)
		}
	}
}
