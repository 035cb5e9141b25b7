package overlayfuse

import (
	"github.com/hanwen/go-fuse/v2/fuse"
)

// rawFS wraps go-fuse's node bridge for the few requests whose whole
// input (lock owners, release flags) or reply the fs API does not let a
// node see. Every other request goes straight to the bridge.
type rawFS struct {
	fuse.RawFileSystem
	ofs *overlayFS
}
