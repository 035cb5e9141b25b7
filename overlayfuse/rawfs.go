package overlayfuse

import (
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// rawFS wraps go-fuse's node bridge for the few requests whose whole
// input (lock owners, release flags) or reply the fs API does not let a
// node see. Every other request goes straight to the bridge.
type rawFS struct {
	fuse.RawFileSystem
	ofs *overlayFS
}

// The kernel takes the set-id bits that exec honours from its cached
// attributes, and a passthrough write may drop them from the backing file
// without telling it: attributes of a set-id file are never cached (a
// zero timeout makes the kernel ask again at every use, where the bridge
// would put its default in).

func (r *rawFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	s := r.RawFileSystem.Lookup(cancel, h, name, out)
	if s == fuse.OK {
		noSetidAttrCache(&out.Attr, &out.AttrValid, &out.AttrValidNsec)
	}
	return s
}

func (r *rawFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	s := r.RawFileSystem.GetAttr(cancel, in, out)
	if s == fuse.OK {
		noSetidAttrCache(&out.Attr, &out.AttrValid, &out.AttrValidNsec)
	}
	return s
}

func (r *rawFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	s := r.RawFileSystem.SetAttr(cancel, in, out)
	if s == fuse.OK {
		noSetidAttrCache(&out.Attr, &out.AttrValid, &out.AttrValidNsec)
	}
	return s
}

func (r *rawFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	s := r.RawFileSystem.Link(cancel, in, name, out)
	if s == fuse.OK {
		noSetidAttrCache(&out.Attr, &out.AttrValid, &out.AttrValidNsec)
	}
	return s
}

// noSetidAttrCache zeroes the attribute timeout of a set-id regular file.
func noSetidAttrCache(a *fuse.Attr, valid *uint64, nsec *uint32) {
	if isSetid(a.Mode) {
		*valid, *nsec = 0, 0
	}
}

func isSetid(mode uint32) bool {
	return mode&syscall.S_IFMT == syscall.S_IFREG && mode&(syscall.S_ISUID|syscall.S_ISGID) != 0
}
