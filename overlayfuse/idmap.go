package overlayfuse

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// IDMapping maps Size ids from ContainerID on to HostID, as one line of a
// user namespace's uid_map.
type IDMapping struct {
	ContainerID, HostID, Size uint32
}

// unmappedID is what the overlay shows for an upper owner outside the
// mapping: no mapping covers it, so an idmapped mount shows it as
// unmapped (the overflow id), and no one in the container owns it.
const unmappedID = 0xfffffffe

// idMap is an overlay's id mapping (Options.UIDMap, Options.GIDMap).
// Lower layers hold container ids and the upper layer host ids, as kernel
// overlayfs with idmapped lower layers leaves them; the overlay shows
// container ids throughout, so an idmapped mount of it with the same
// mapping shows host ids, and the container its own.
type idMap struct {
	uids, gids []IDMapping
}

func (m idMap) active() bool { return len(m.uids) > 0 }

func validateIDMapping(kind string, ms []IDMapping) error {
	for _, e := range ms {
		if e.Size == 0 || uint64(e.ContainerID)+uint64(e.Size) > 1<<32-1 || uint64(e.HostID)+uint64(e.Size) > 1<<32-1 {
			return fmt.Errorf("%s mapping %d:%d:%d: empty or beyond the 32-bit id range", kind, e.ContainerID, e.HostID, e.Size)
		}
	}
	return nil
}

// ToHostID maps container id id through ms; false if no line covers it.
func ToHostID(ms []IDMapping, id uint32) (uint32, bool) {
	for _, e := range ms {
		if id >= e.ContainerID && id-e.ContainerID < e.Size {
			return e.HostID + id - e.ContainerID, true
		}
	}
	return 0, false
}

func toContainerID(ms []IDMapping, id uint32) uint32 {
	for _, e := range ms {
		if id >= e.HostID && id-e.HostID < e.Size {
			return e.ContainerID + id - e.HostID
		}
	}
	return unmappedID
}

// toHost maps the owner a caller asked for to the upper layer's; -1
// (leave as is) stays. An id outside the mapping is EOVERFLOW, as the
// kernel answers for an id it cannot map.
func (m idMap) toHost(uid, gid int) (int, int, syscall.Errno) {
	if !m.active() {
		return uid, gid, 0
	}
	for _, p := range []struct {
		id *int
		ms []IDMapping
	}{{&uid, m.uids}, {&gid, m.gids}} {
		if *p.id < 0 {
			continue
		}
		h, ok := ToHostID(p.ms, uint32(*p.id))
		if !ok {
			return 0, 0, syscall.EOVERFLOW
		}
		*p.id = int(h)
	}
	return uid, gid, 0
}

// hostStat turns the owner of a lower object's stat into the host ids its
// upper copy gets.
func (m idMap) hostStat(st *unix.Stat_t) syscall.Errno {
	uid, gid, errno := m.toHost(int(st.Uid), int(st.Gid))
	st.Uid, st.Gid = uint32(uid), uint32(gid)
	return errno
}

// inUpper reports whether r is an object of the upper layer.
func (r realRef) inUpper() bool { return r.valid() && r.layer.upper }

// showUpper turns an upper object's owner into the container ids the
// overlay shows.
func (m idMap) showUpper(a *fuse.Attr) {
	if !m.active() {
		return
	}
	a.Uid = toContainerID(m.uids, a.Uid)
	a.Gid = toContainerID(m.gids, a.Gid)
}

// checkIDMapped fails a mount with a mapping whose kernel did not take
// FUSE_ALLOW_IDMAP: no idmapped mount of it could be made.
func (ofs *overlayFS) checkIDMapped() error {
	if !ofs.ids.active() {
		return nil
	}
	if ofs.server.KernelSettings().Flags64()&fuse.CAP_ALLOW_IDMAP == 0 {
		return fmt.Errorf("an id mapping: %w", ErrIDMapUnsupported)
	}
	return nil
}

// creator is the owner, in the upper layer's ids, of what the caller of
// ctx creates; -1, -1 without a caller.
func (ofs *overlayFS) creator(ctx context.Context) (int, int, syscall.Errno) {
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return -1, -1, 0
	}
	return ofs.ids.toHost(int(c.Uid), int(c.Gid))
}

// ErrIDMapUnsupported is the error of a mount with an id mapping on a
// kernel that cannot idmap FUSE mounts.
var ErrIDMapUnsupported = errors.New("this kernel cannot idmap FUSE mounts (FUSE_ALLOW_IDMAP needs Linux 6.12)")
