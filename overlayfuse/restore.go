package overlayfuse

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// restore rebuilds, before the server reads a request, every node and
// handle the kernel holds from an earlier server (docs/restart.md): each
// node is looked up once through the bridge, parents first, so that the
// bridge knows its id, with the rest of the kernel's count carried as a
// deficit; each handle is opened again and the kernel's number for it
// mapped to the bridge's.
func (ofs *overlayFS) restore(r *requestFS) {
	nodes, handles := ofs.state.records()
	byID := make(map[uint64]*nodeRecord, len(nodes))
	for i := range nodes {
		rec := &nodes[i]
		byID[rec.id] = rec
		if rec.id&extraIDBit != 0 && rec.flags&nodeRetired == 0 {
			// The node the name shows now: a lookup must find this id.
			ofs.mu.Lock()
			ofs.setExtraIDLocked(rec.ino, rec.gen, rec.id)
			ofs.gens[rec.ino] = max(ofs.gens[rec.ino], rec.gen)
			ofs.mu.Unlock()
		}
	}
	depth := func(rec *nodeRecord) int {
		d := 0
		for p := rec; p != nil && p.id != fuse.FUSE_ROOT_ID && d <= len(nodes); d++ {
			p = byID[p.parent]
		}
		return d
	}
	order := make([]*nodeRecord, 0, len(nodes))
	depths := make(map[uint64]int, len(nodes))
	for i := range nodes {
		order = append(order, &nodes[i])
		depths[nodes[i].id] = depth(&nodes[i])
	}
	slices.SortStableFunc(order, func(a, b *nodeRecord) int { return depths[a.id] - depths[b.id] })

	r.carry = carriedState{
		fhs:       map[uint64]uint64{},
		deficit:   map[uint64]uint64{},
		backing:   map[uint64]*carriedBacking{},
		backingOf: map[uint64]uint64{},
	}
	known := map[uint64]bool{fuse.FUSE_ROOT_ID: true}
	lost := 0
	for _, rec := range order {
		if rec.id == fuse.FUSE_ROOT_ID {
			continue
		}
		if !ofs.restoreNode(r, rec, known) {
			lost++
			continue
		}
		known[rec.id] = true
		if rec.count > 1 {
			r.carry.deficit[rec.id] = rec.count - 1
		}
	}
	for _, h := range handles {
		if !known[h.id] {
			lost++
			continue
		}
		in := fuse.OpenIn{InHeader: fuse.InHeader{NodeId: h.id}, Flags: h.flags &^ (unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC)}
		var out fuse.OpenOut
		var s fuse.Status
		ofs.restoring = true
		if h.dir {
			s = r.next.OpenDir(nil, &in, &out)
		} else {
			s = r.next.Open(nil, &in, &out)
		}
		ofs.restoring = false
		if s != fuse.OK {
			ofs.opts.Logger.Printf("overlayfuse: %s: reopen handle %#x of node %#x: %v", ofs.mountpoint, h.fh, h.id, s)
			lost++
			continue
		}
		r.carry.fhs[h.fh] = out.Fh
		if h.backing != 0 {
			b := r.carry.backing[h.id]
			if b == nil {
				b = &carriedBacking{id: h.backing}
				r.carry.backing[h.id] = b
			}
			b.users++
			r.carry.backingOf[h.fh] = h.id
		}
	}
	r.carried.Store(true)
	if lost > 0 {
		ofs.opts.Logger.Printf("overlayfuse: %s: %d nodes or handles could not be carried over; their requests fail", ofs.mountpoint, lost)
	}
}

// restoreSafely is restore, failing instead of panicking: the caller
// then mounts anew rather than the daemon dying.
func (ofs *overlayFS) restoreSafely(r *requestFS) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("restore: %v", p)
		}
	}()
	ofs.restore(r)
	return nil
}

// restoreNode makes the bridge know node rec.
func (ofs *overlayFS) restoreNode(r *requestFS, rec *nodeRecord, known map[uint64]bool) bool {
	var out fuse.EntryOut
	if rec.flags&(nodeOrphan|nodeRetired) == 0 && !rec.busy && known[rec.parent] {
		h := fuse.InHeader{NodeId: rec.parent}
		if r.next.Lookup(nil, &h, rec.name, &out) == fuse.OK && out.NodeId != 0 { // 0: a cached miss
			if out.NodeId == rec.id {
				return true
			}
			r.next.Forget(out.NodeId, 1)
		}
	}
	// A node no name leads to any more: a stale node of the same id,
	// showing what the record says if it can still be found.
	ofs.restoring = true
	ofs.ghost = rec
	h := fuse.InHeader{NodeId: fuse.FUSE_ROOT_ID}
	s := r.next.Lookup(nil, &h, ghostName(rec.id), &out)
	ofs.ghost = nil
	ofs.restoring = false
	if s != fuse.OK || out.NodeId != rec.id {
		ofs.opts.Logger.Printf("overlayfuse: %s: node %#x (%q) not carried over: %v", ofs.mountpoint, rec.id, rec.name, s)
		return false
	}
	return true
}

// ghostName is the name a ghost node is restored under: no name the
// kernel sends has a NUL.
func ghostName(id uint64) string { return "\x00" + strconv.FormatUint(id, 16) }

// lookupGhost answers the lookup of a ghost name during a restore with a
// stale node for ofs.ghost.
func (n *node) lookupGhost(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	rec := n.ofs.ghost
	if rec == nil || name != ghostName(rec.id) {
		return nil, syscall.ENOENT
	}
	var upper realRef
	var lowers []realRef
	if parent := n.ofs.nodeByID(rec.parent); parent != nil && rec.name != "" && !rec.busy {
		if e, errno := parent.resolve(rec.name); errno == 0 {
			switch {
			case rec.layer < 0 && rec.flags&nodeRetired != 0:
				upper, lowers = e.upper, nil
			case rec.flags&nodeRetired != 0:
				for i, l := range e.lowers {
					if l.layer == n.ofs.lowers[rec.layer] {
						lowers = e.lowers[i : i+1]
					}
				}
			default:
				upper, lowers = e.upper, e.lowers
			}
		}
	}
	ch := n.ofs.newNode(upper, lowers)
	ch.ino = rec.ino
	ch.stale = true
	var st unix.Stat_t
	mode := uint32(unix.S_IFREG)
	if r := ch.real(); r.valid() && r.stat(&st) == nil {
		mode = st.Mode & unix.S_IFMT
		ch.fillAttr(&st, ch.hasUpper(), &out.Attr)
	}
	n.ofs.mu.Lock()
	if rec.id == rec.ino && n.ofs.gens[rec.ino] <= rec.gen {
		// New lookups of the inode get a node of their own.
		n.ofs.gens[rec.ino] = rec.gen + 1
	}
	n.ofs.mu.Unlock()
	return n.NewInode(ctx, ch, fs.StableAttr{Mode: mode, Ino: rec.id, Gen: rec.gen}), 0
}

// nodeByID is the live node with FUSE node id id, if the overlay knows it.
func (ofs *overlayFS) nodeByID(id uint64) *node {
	if id == fuse.FUSE_ROOT_ID {
		return ofs.root
	}
	ofs.mu.Lock()
	defer ofs.mu.Unlock()
	ino := id
	if id&extraIDBit != 0 {
		ino = ofs.extraInos[id]
	}
	if n := ofs.nodes[ino]; n != nil && n.StableAttr().Ino == id {
		return n
	}
	return nil
}
