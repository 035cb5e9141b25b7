package overlayfuse

import (
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The kernel names a node by its FUSE node id, and keeps the ids it was
// given for as long as it holds the inodes: across a crash of the server
// too. So that the next server can answer for them, ids are the overlay
// inode numbers (go-fuse's ExternalNodeID), which every server of the
// mount computes alike. A node that replaces another of the same inode
// number the kernel still holds (a retired node's successor, or a number
// the upper filesystem reused) needs an id of its own: those come from a
// range no inode number uses (extraIDBit), counted by the mount's state,
// and the replies that carry their attributes get the inode number back
// (requestFS).
const extraIDBit = 1 << 62

type idKey struct{ ino, gen uint64 }

// nodeIDLocked is the node id of generation gen of inode ino. ofs.mu held.
func (ofs *overlayFS) nodeIDLocked(ino, gen uint64) uint64 {
	if gen <= 1 && ino != fuse.FUSE_ROOT_ID && ino&extraIDBit == 0 {
		return ino
	}
	k := idKey{ino, gen}
	if id, ok := ofs.extraIDs[k]; ok {
		return id
	}
	id := extraIDBit | ofs.state.nextExtraID()
	ofs.setExtraIDLocked(ino, gen, id)
	return id
}

// setExtraIDLocked records id as the node id of generation gen of ino.
// ofs.mu held.
func (ofs *overlayFS) setExtraIDLocked(ino, gen, id uint64) {
	if ofs.extraIDs == nil {
		ofs.extraIDs = map[idKey]uint64{}
		ofs.extraInos = map[uint64]uint64{}
	}
	ofs.extraIDs[idKey{ino, gen}] = id
	ofs.extraInos[id] = ino
}

// freshAttr is the stable attributes of a new node for inode ino, whose
// earlier node the kernel may still hold.
func (ofs *overlayFS) freshAttr(ino uint64, mode uint32) fs.StableAttr {
	ofs.mu.Lock()
	defer ofs.mu.Unlock()
	gen := max(ofs.gens[ino], 1)
	if old := ofs.nodes[ino]; old != nil && gen <= old.StableAttr().Gen {
		gen = old.StableAttr().Gen + 1
		ofs.gens[ino] = gen
	}
	return fs.StableAttr{Mode: mode, Ino: ofs.nodeIDLocked(ino, gen), Gen: gen}
}

// inoOfID is the inode number of the node with id, if it is an extra id.
func (ofs *overlayFS) inoOfID(id uint64) (uint64, bool) {
	if id&extraIDBit == 0 {
		return id, false
	}
	ofs.mu.Lock()
	defer ofs.mu.Unlock()
	ino, ok := ofs.extraInos[id]
	return ino, ok
}

// dropNodeID forgets the extra id of a node the kernel forgot. ofs.mu held.
func (ofs *overlayFS) dropNodeID(n *node) {
	a := n.StableAttr()
	if a.Ino&extraIDBit == 0 {
		return
	}
	if ofs.extraIDs[idKey{n.ino, a.Gen}] == a.Ino {
		delete(ofs.extraIDs, idKey{n.ino, a.Gen})
	}
	delete(ofs.extraInos, a.Ino)
}
