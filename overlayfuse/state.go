package overlayfuse

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The state file holds what the next server of a mount needs and only
// this server knows: the INIT the kernel sent, the nodes the kernel holds
// (id, lookup count, where to find the object) and the open handles. It is
// a memfd mapped into the server and updated in place with plain stores:
// a kill -9 cannot lose a store to a shared mapping, and a machine crash
// ends the mount anyway, so nothing is ever synced (docs/restart.md).
//
// Layout: one header page, then the node slots, then the handle slots.
// Slots are allocated by this process (a free list in memory) and read
// back by the next one, which rebuilds the free list.
const (
	stateMagic   = "OVFSTATE"
	stateVersion = 1

	nodeSlotSize   = 320
	maxNodeSlots   = 1 << 20
	handleSlotSize = 32
	maxHandleSlots = 1 << 20

	nodeRegion   = 4096
	handleRegion = nodeRegion + nodeSlotSize*maxNodeSlots
	stateSize    = handleRegion + handleSlotSize*maxHandleSlots
)

// stateHeader is the first page of the state file.
type stateHeader struct {
	magic   [8]byte
	version uint32
	initLen uint32
	init    [256]byte
	// epoch counts the servers of the mount: it is the high half of every
	// file handle the kernel gets, so that handles of an earlier server
	// are told apart without a table lookup.
	epoch    uint64
	extraSeq uint64 // last extra node id handed out (nodeid.go)
	// cookieKey keys the readdir offsets (readdir.go), which must mean
	// the same entry for every server.
	cookieKey [2]uint64
	// layers is a hash of the layer paths and options that shape ids.
	layers uint64
	// mountDev is the mount's device number: a keeper's connection is
	// only taken over where it is mounted.
	mountDev uint64
	// nodeHigh and handleHigh bound the slots ever used.
	nodeHigh, handleHigh uint32
}

// Slot states. A slot being rewritten is slotBusy while its fields are
// inconsistent: the next server treats its name as unknown.
const (
	slotFree  = 0
	slotValid = 1
	slotBusy  = 2
)

// nodeSlot records one node id the kernel holds.
type nodeSlot struct {
	state uint32
	flags uint32
	id    uint64
	// parent and name are where the object was last seen; layer is the
	// layer of a retired node's object (-1: the upper).
	parent uint64
	count  uint64 // the kernel's lookup count
	ino    uint64
	gen    uint64
	layer  int32
	nlen   uint16
	_      uint16
	name   [255]byte
}

// Node slot flags.
const (
	nodeOrphan  = 1 << iota // no name left: the object cannot be found again
	nodeRetired             // taken out of lookups (passthrough.go)
)

// handleSlot records one open file handle the kernel holds.
type handleSlot struct {
	state   uint32
	flags   uint32 // the open flags
	fh      uint64 // the kernel's handle
	id      uint64 // its node
	backing int32  // passthrough backing id, 0 if none
	dir     uint32 // 1 for a directory handle
}

type stateFile struct {
	f   *os.File
	mem []byte
	hdr *stateHeader

	mu      sync.Mutex
	nodes   map[uint64]int32 // node id -> slot
	freeN   []int32
	handles map[uint64]int32 // kernel handle -> slot
	freeH   []int32
	// places finds the node of a name, for renames and unlinks; others
	// are the names known of each node.
	places map[placeKey]int32
	others map[int32][]placeKey
}

func init() {
	if unsafe.Sizeof(nodeSlot{}) > nodeSlotSize || unsafe.Sizeof(handleSlot{}) > handleSlotSize ||
		unsafe.Sizeof(stateHeader{}) > nodeRegion {
		panic("overlayfuse: state slots outgrew their size")
	}
}

// newStateFile makes the state file of a new mount.
func newStateFile(layers uint64) (*stateFile, error) {
	fd, err := unix.MemfdCreate("overlayfuse-state", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	f := os.NewFile(uintptr(fd), "overlayfuse-state")
	if err := f.Truncate(stateSize); err != nil {
		f.Close()
		return nil, fmt.Errorf("state file: %w", err)
	}
	s, err := mapState(f)
	if err != nil {
		return nil, err
	}
	copy(s.hdr.magic[:], stateMagic)
	s.hdr.version = stateVersion
	s.hdr.layers = layers
	var key [16]byte
	if _, err := rand.Read(key[:]); err != nil {
		s.close()
		return nil, err
	}
	s.hdr.cookieKey = [2]uint64{binary.LittleEndian.Uint64(key[:8]), binary.LittleEndian.Uint64(key[8:])}
	s.hdr.epoch = 1
	return s, nil
}

// openStateFile maps the state file f of a live mount, for its next
// server, and checks that it describes the same layers.
func openStateFile(f *os.File, layers uint64) (*stateFile, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	if st.Size() != stateSize {
		return nil, fmt.Errorf("state file: size %d, want %d", st.Size(), stateSize)
	}
	s, err := mapState(f)
	if err != nil {
		return nil, err
	}
	switch {
	case string(s.hdr.magic[:]) != stateMagic:
		err = errors.New("state file: bad magic")
	case s.hdr.version != stateVersion:
		err = fmt.Errorf("state file: version %d, this build reads %d", s.hdr.version, stateVersion)
	case s.hdr.layers != layers:
		err = errors.New("state file: made for other layers or options")
	case s.hdr.nodeHigh > maxNodeSlots || s.hdr.handleHigh > maxHandleSlots:
		err = errors.New("state file: corrupt slot counts")
	}
	if err != nil {
		s.close()
		return nil, err
	}
	s.hdr.epoch++
	return s, nil
}

func mapState(f *os.File) (*stateFile, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, stateSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("state file: mmap: %w", err)
	}
	return &stateFile{
		f:       f,
		mem:     mem,
		hdr:     (*stateHeader)(unsafe.Pointer(&mem[0])),
		nodes:   map[uint64]int32{},
		handles: map[uint64]int32{},
		places:  map[placeKey]int32{},
		others:  map[int32][]placeKey{},
	}, nil
}

func (s *stateFile) close() {
	if s == nil {
		return
	}
	if s.mem != nil {
		_ = unix.Munmap(s.mem) // nothing to do about it: the mapping goes with the process
		s.mem, s.hdr = nil, nil
	}
	s.f.Close()
}

// dup returns a new descriptor of the state file, for a keeper.
func (s *stateFile) dup() (*os.File, error) {
	fd, err := unix.FcntlInt(s.f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "overlayfuse-state"), nil
}

func (s *stateFile) node(i int32) *nodeSlot {
	return (*nodeSlot)(unsafe.Pointer(&s.mem[nodeRegion+int(i)*nodeSlotSize]))
}

func (s *stateFile) handle(i int32) *handleSlot {
	return (*handleSlot)(unsafe.Pointer(&s.mem[handleRegion+int(i)*handleSlotSize]))
}

func (s *stateFile) epoch() uint64 { return s.hdr.epoch }

func (s *stateFile) nextExtraID() uint64 {
	return atomic.AddUint64(&s.hdr.extraSeq, 1)
}

func (s *stateFile) setInit(b []byte) {
	s.hdr.initLen = uint32(copy(s.hdr.init[:], b))
}

func (s *stateFile) initBytes() []byte { return s.hdr.init[:s.hdr.initLen] }

// allocNode returns a free node slot. s.mu held.
func (s *stateFile) allocNode() (int32, bool) {
	if n := len(s.freeN); n > 0 {
		i := s.freeN[n-1]
		s.freeN = s.freeN[:n-1]
		return i, true
	}
	if s.hdr.nodeHigh >= maxNodeSlots {
		return 0, false
	}
	s.hdr.nodeHigh++
	return int32(s.hdr.nodeHigh - 1), true
}

// setPlace writes where the object of slot sl is. s.mu held.
func setPlace(sl *nodeSlot, parent uint64, name string) {
	sl.parent = parent
	sl.nlen = uint16(copy(sl.name[:], name))
}

// entered counts one more kernel reference to node id (inode ino,
// generation gen), which was given out as name in directory parent.
func (s *stateFile) entered(id, ino, gen, parent uint64, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.nodes[id]; ok {
		s.node(i).count++
		if name != "" {
			s.addPlace(i, placeKey{parent, name})
		}
		return
	}
	i, ok := s.allocNode()
	if !ok {
		return // full: this node cannot be carried over (restore logs it)
	}
	sl := s.node(i)
	sl.state = slotBusy
	sl.flags = 0
	if name == "" {
		sl.flags = nodeOrphan
	}
	sl.id, sl.ino, sl.gen = id, ino, gen
	sl.count = 1
	sl.layer = -1
	setPlace(sl, parent, name)
	sl.state = slotValid
	s.nodes[id] = i
	if name != "" {
		s.addPlace(i, placeKey{parent, name})
	}
}

// addPlace records one more name of the node in slot i. s.mu held.
func (s *stateFile) addPlace(i int32, k placeKey) {
	if j, ok := s.places[k]; ok {
		if j == i {
			return
		}
		s.dropPlace(j, k)
	}
	s.places[k] = i
	s.others[i] = append(s.others[i], k)
}

// dropPlace forgets name k of the node in slot i: if it was the one the
// slot records, another known name takes its place, or the node is an
// orphan. s.mu held.
func (s *stateFile) dropPlace(i int32, k placeKey) {
	if s.places[k] == i {
		delete(s.places, k)
	}
	ks := slices.DeleteFunc(s.others[i], func(o placeKey) bool { return o == k })
	s.others[i] = ks
	sl := s.node(i)
	if sl.flags&nodeOrphan != 0 || sl.parent != k.parent || string(sl.name[:sl.nlen]) != k.name {
		return
	}
	sl.state = slotBusy
	if len(ks) > 0 {
		setPlace(sl, ks[0].parent, ks[0].name)
	} else {
		sl.flags |= nodeOrphan
	}
	sl.state = slotValid
}

// forgot takes nlookup kernel references off node id.
func (s *stateFile) forgot(id, nlookup uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.nodes[id]
	if !ok {
		return
	}
	sl := s.node(i)
	if sl.count > nlookup {
		sl.count -= nlookup
		return
	}
	for _, k := range s.others[i] {
		if s.places[k] == i {
			delete(s.places, k)
		}
	}
	delete(s.others, i)
	sl.state = slotFree
	delete(s.nodes, id)
	s.freeN = append(s.freeN, i)
}

type placeKey struct {
	parent uint64
	name   string
}

// renamed moves the node found at oldParent/oldName; exchange swaps it
// with the one at newParent/newName, otherwise that one lost the name.
func (s *stateFile) renamed(oldParent uint64, oldName string, newParent uint64, newName string, exchange bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	from, okFrom := s.places[placeKey{oldParent, oldName}]
	to, okTo := s.places[placeKey{newParent, newName}]
	if okFrom {
		s.dropPlace(from, placeKey{oldParent, oldName})
	}
	if okTo {
		s.dropPlace(to, placeKey{newParent, newName})
	}
	if okFrom {
		s.addPlace(from, placeKey{newParent, newName})
		s.replace(from, newParent, newName)
	}
	if okTo && exchange {
		s.addPlace(to, placeKey{oldParent, oldName})
		s.replace(to, oldParent, oldName)
	}
}

// replace makes parent/name the recorded place of slot i if it has none.
// s.mu held.
func (s *stateFile) replace(i int32, parent uint64, name string) {
	sl := s.node(i)
	if sl.flags&nodeOrphan == 0 {
		return
	}
	sl.state = slotBusy
	setPlace(sl, parent, name)
	sl.flags &^= nodeOrphan
	sl.state = slotValid
}

// unlinked records that parent/name is gone.
func (s *stateFile) unlinked(parent uint64, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := placeKey{parent, name}
	if i, ok := s.places[k]; ok {
		s.dropPlace(i, k)
	}
}

// retired records that node id is out of lookups, showing the object of
// layer (-1: the upper).
func (s *stateFile) retired(id uint64, layer int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.nodes[id]; ok {
		sl := s.node(i)
		sl.layer = layer
		sl.flags |= nodeRetired
	}
}

// opened records kernel handle fh of node id.
func (s *stateFile) opened(fh, id uint64, flags uint32, backing int32, dir bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var i int32
	if n := len(s.freeH); n > 0 {
		i = s.freeH[n-1]
		s.freeH = s.freeH[:n-1]
	} else if s.hdr.handleHigh < maxHandleSlots {
		i = int32(s.hdr.handleHigh)
		s.hdr.handleHigh++
	} else {
		return
	}
	h := s.handle(i)
	h.state = slotBusy
	h.fh, h.id, h.flags, h.backing = fh, id, flags, backing
	h.dir = 0
	if dir {
		h.dir = 1
	}
	h.state = slotValid
	s.handles[fh] = i
}

// released drops kernel handle fh.
func (s *stateFile) released(fh uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.handles[fh]
	if !ok {
		return
	}
	s.handle(i).state = slotFree
	delete(s.handles, fh)
	s.freeH = append(s.freeH, i)
}

// nodeRecord and handleRecord are slots read back by the next server.
type nodeRecord struct {
	slot              int32
	id, parent, count uint64
	ino, gen          uint64
	layer             int32
	flags             uint32
	name              string
	busy              bool
}

type handleRecord struct {
	slot    int32
	fh, id  uint64
	flags   uint32
	backing int32
	dir     bool
}

// records reads back every slot in use, and rebuilds the free lists and
// indexes for this server, which goes on with the same slots.
func (s *stateFile) records() ([]nodeRecord, []handleRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var nodes []nodeRecord
	for i := int32(0); i < int32(s.hdr.nodeHigh); i++ {
		sl := s.node(i)
		if sl.state == slotFree {
			s.freeN = append(s.freeN, i)
			continue
		}
		r := nodeRecord{slot: i, id: sl.id, parent: sl.parent, count: sl.count, ino: sl.ino, gen: sl.gen,
			layer: sl.layer, flags: sl.flags, busy: sl.state != slotValid}
		if !r.busy && int(sl.nlen) <= len(sl.name) {
			r.name = string(sl.name[:sl.nlen])
		}
		sl.state = slotValid
		s.nodes[r.id] = i
		if r.name != "" && r.flags&nodeOrphan == 0 {
			s.addPlace(i, placeKey{r.parent, r.name})
		}
		nodes = append(nodes, r)
	}
	var handles []handleRecord
	for i := int32(0); i < int32(s.hdr.handleHigh); i++ {
		h := s.handle(i)
		if h.state != slotValid {
			h.state = slotFree
			s.freeH = append(s.freeH, i)
			continue
		}
		s.handles[h.fh] = i
		handles = append(handles, handleRecord{slot: i, fh: h.fh, id: h.id, flags: h.flags, backing: h.backing, dir: h.dir != 0})
	}
	return nodes, handles
}

// setCount puts the kernel's lookup count of node id back, after a
// restore looked it up once.
func (s *stateFile) setCount(id, count uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.nodes[id]; ok {
		s.node(i).count = count
	}
}
