package keeper

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// FDStore keeps hand-overs in systemd's file descriptor store of our
// service: each id is two entries, FDNAME=<id>.dev and <id>.state. systemd
// passes them back at the next start (LISTEN_FDS, LISTEN_FDNAMES), also
// after `systemctl restart`, which kills every process of the service's
// cgroup and so any holder process in it. The unit needs
// FileDescriptorStoreMax= and FileDescriptorStorePreserve=yes.
type FDStore struct {
	mu     sync.Mutex
	notify string
	// inherited is what systemd passed at start, until dropped.
	inherited map[string]overlayfuse.Handover
	// stored is every id this process put in the store.
	stored map[string]bool
}

var _ Keeper = (*FDStore)(nil)

const (
	devSuffix   = ".dev"
	stateSuffix = ".state"
	// The first descriptor systemd passes (SD_LISTEN_FDS_START).
	listenFDsStart = 3
)

// FDStoreAvailable reports whether systemd started us with a file
// descriptor store: $NOTIFY_SOCKET, and $FDSTORE (systemd 254 and later)
// set to FileDescriptorStoreMax=.
func FDStoreAvailable() bool {
	n, err := strconv.Atoi(os.Getenv("FDSTORE"))
	return os.Getenv("NOTIFY_SOCKET") != "" && err == nil && n > 0
}

// OpenFDStore takes the descriptors systemd passed us, and sends new ones
// to $NOTIFY_SOCKET. Passed descriptors that are not ours are closed.
func OpenFDStore() (*FDStore, error) {
	s := &FDStore{notify: os.Getenv("NOTIFY_SOCKET"), inherited: map[string]overlayfuse.Handover{}, stored: map[string]bool{}}
	if s.notify == "" {
		return nil, errors.New("no $NOTIFY_SOCKET: not started by systemd")
	}
	files := listenFiles()
	partial := map[string]overlayfuse.Handover{}
	for name, f := range files {
		id, ok := strings.CutSuffix(name, devSuffix)
		isDev := ok
		if !ok {
			id, ok = strings.CutSuffix(name, stateSuffix)
		}
		if !ok || checkID(id) != nil {
			f.Close()
			continue
		}
		h := partial[id]
		if isDev {
			h.Dev = f
		} else {
			h.State = f
		}
		partial[id] = h
	}
	for id, h := range partial {
		if h.Dev == nil || h.State == nil {
			// Half an entry is of no use: take it out of the store.
			h.Close()
			_ = s.remove(id)
			continue
		}
		s.inherited[id] = h
		s.stored[id] = true
	}
	return s, nil
}

// listenFiles returns the descriptors systemd passed us by name (sd_listen_fds),
// and unsets the variables so that no child takes them for its own.
func listenFiles() map[string]*os.File {
	defer func() {
		for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
			os.Unsetenv(v)
		}
	}()
	pid, err := strconv.Atoi(os.Getenv("LISTEN_PID"))
	if err != nil || pid != os.Getpid() {
		return nil
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n <= 0 {
		return nil
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	files := map[string]*os.File{}
	for i := range n {
		fd := listenFDsStart + i
		unix.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), "listen-fd")
		if i >= len(names) || files[names[i]] != nil {
			f.Close() // unnamed, or a name twice: not ours
			continue
		}
		files[names[i]] = f
	}
	return files
}

// notifyMsg sends one message to systemd, with files attached.
func (s *FDStore) notifyMsg(msg string, files ...*os.File) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	oob, err := rights(files)
	if err != nil {
		return err
	}
	// x/sys/unix reads a leading '@' as the abstract namespace, as systemd means it.
	return unix.Sendmsg(fd, []byte(msg), oob, &unix.SockaddrUnix{Name: s.notify}, 0)
}

// remove takes both entries of id out of the store.
func (s *FDStore) remove(id string) error {
	return errors.Join(
		s.notifyMsg("FDSTOREREMOVE=1\nFDNAME="+id+devSuffix),
		s.notifyMsg("FDSTOREREMOVE=1\nFDNAME="+id+stateSuffix))
}

// Keep implements Keeper.
func (s *FDStore) Keep(id string, h overlayfuse.Handover) error {
	if err := checkID(id); err != nil {
		return err
	}
	if h.Dev == nil || h.State == nil {
		return fmt.Errorf("keep %s: hand-over lacks a file", id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The store keeps every descriptor it is given: replace, not add.
	if s.stored[id] {
		if err := s.remove(id); err != nil {
			return fmt.Errorf("keep %s: %w", id, err)
		}
	}
	s.stored[id] = true
	if err := errors.Join(
		s.notifyMsg("FDSTORE=1\nFDNAME="+id+devSuffix, h.Dev),
		s.notifyMsg("FDSTORE=1\nFDNAME="+id+stateSuffix, h.State)); err != nil {
		return fmt.Errorf("keep %s in systemd's fd store: %w", id, err)
	}
	return nil
}

// Drop implements Keeper.
func (s *FDStore) Drop(id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if h, ok := s.inherited[id]; ok {
		h.Close()
		delete(s.inherited, id)
	}
	delete(s.stored, id)
	if err := s.remove(id); err != nil {
		return fmt.Errorf("drop %s from systemd's fd store: %w", id, err)
	}
	return nil
}

// Held implements Keeper: what systemd passed at start.
func (s *FDStore) Held() (map[string]overlayfuse.Handover, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	held := map[string]overlayfuse.Handover{}
	for id, h := range s.inherited {
		d, err := dupHandover(h)
		if err != nil {
			for _, h := range held {
				h.Close()
			}
			return nil, err
		}
		held[id] = d
	}
	return held, nil
}

// Close implements Keeper; systemd goes on holding what it holds.
func (s *FDStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, h := range s.inherited {
		h.Close()
		delete(s.inherited, id)
	}
	return nil
}

func dupHandover(h overlayfuse.Handover) (overlayfuse.Handover, error) {
	dev, err := dupFile(h.Dev)
	if err != nil {
		return overlayfuse.Handover{}, err
	}
	state, err := dupFile(h.State)
	if err != nil {
		dev.Close()
		return overlayfuse.Handover{}, err
	}
	return overlayfuse.Handover{Dev: dev, State: state}, nil
}

func dupFile(f *os.File) (*os.File, error) {
	raw, err := rawFD(f)
	if err != nil {
		return nil, err
	}
	fd, err := unix.FcntlInt(uintptr(raw), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}
