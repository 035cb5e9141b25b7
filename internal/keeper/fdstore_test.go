package keeper

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// fakeSystemd is the receiving end of $NOTIFY_SOCKET.
type fakeSystemd struct {
	t    *testing.T
	conn *net.UnixConn
	path string
}

func newFakeSystemd(t *testing.T) *fakeSystemd {
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &fakeSystemd{t: t, conn: c, path: path}
}

// next reads one notification and the files passed with it.
func (s *fakeSystemd) next() (map[string]string, []*os.File) {
	s.t.Helper()
	_ = s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf, oob := make([]byte, 4096), make([]byte, 256)
	n, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		s.t.Fatal(err)
	}
	files, err := parseRights(oob[:oobn])
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { closeFiles(files) })
	kv := map[string]string{}
	for _, line := range strings.Split(string(buf[:n]), "\n") {
		k, v, _ := strings.Cut(line, "=")
		kv[k] = v
	}
	return kv, files
}

// expect reads one notification and checks it is msg with a file whose
// inode is ino (0: no file).
func (s *fakeSystemd) expect(msg string, ino uint64) *os.File {
	s.t.Helper()
	kv, files := s.next()
	want := map[string]string{}
	for _, line := range strings.Split(msg, "\n") {
		k, v, _ := strings.Cut(line, "=")
		want[k] = v
	}
	if fmt.Sprint(kv) != fmt.Sprint(want) {
		s.t.Fatalf("notification %v, want %v", kv, want)
	}
	switch {
	case ino == 0 && len(files) == 0:
		return nil
	case len(files) == 1 && inode(files[0]) == ino:
		return files[0]
	}
	s.t.Fatalf("%q came with %d files, want one of inode %d", msg, len(files), ino)
	return nil
}

func tempFile(t testing.TB, name string) *os.File {
	f, err := os.Create(filepath.Join(t.TempDir(), name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// Keep stores both files under their names (replacing an earlier pair),
// Drop removes them, and a daemon started again with what the store holds
// gets the very files back by id; a half pair is taken out of the store.
func TestFDStore(t *testing.T) {
	sd := newFakeSystemd(t)
	t.Setenv("NOTIFY_SOCKET", sd.path)
	t.Setenv("FDSTORE", "64")
	if !FDStoreAvailable() {
		t.Fatal("FDStoreAvailable with NOTIFY_SOCKET and FDSTORE set: false")
	}
	s, err := OpenFDStore()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	dev, state := tempFile(t, "dev"), tempFile(t, "state")
	if err := s.Keep("7@42", overlayfuse.Handover{Dev: dev, State: state}); err != nil {
		t.Fatal(err)
	}
	sd.expect("FDSTORE=1\nFDNAME=7@42.dev", inode(dev))
	sd.expect("FDSTORE=1\nFDNAME=7@42.state", inode(state))

	dev2, state2 := tempFile(t, "dev2"), tempFile(t, "state2")
	if err := s.Keep("7@42", overlayfuse.Handover{Dev: dev2, State: state2}); err != nil {
		t.Fatal(err)
	}
	sd.expect("FDSTOREREMOVE=1\nFDNAME=7@42.dev", 0)
	sd.expect("FDSTOREREMOVE=1\nFDNAME=7@42.state", 0)
	storedDev := sd.expect("FDSTORE=1\nFDNAME=7@42.dev", inode(dev2))
	storedState := sd.expect("FDSTORE=1\nFDNAME=7@42.state", inode(state2))

	if err := s.Keep("8@43", overlayfuse.Handover{Dev: dev, State: state}); err != nil {
		t.Fatal(err)
	}
	sd.expect("FDSTORE=1\nFDNAME=8@43.dev", inode(dev))
	sd.expect("FDSTORE=1\nFDNAME=8@43.state", inode(state))
	if err := s.Drop("8@43"); err != nil {
		t.Fatal(err)
	}
	sd.expect("FDSTOREREMOVE=1\nFDNAME=8@43.dev", 0)
	sd.expect("FDSTOREREMOVE=1\nFDNAME=8@43.state", 0)

	if err := s.Keep("bad:id", overlayfuse.Handover{Dev: dev, State: state}); err == nil {
		t.Fatal("Keep of an id with ':' succeeded")
	}

	// The next start: systemd passes what it stores, plus a half pair
	// and a descriptor that is not ours.
	half := tempFile(t, "half")
	cmd, out := child(t, "fdstore", []string{
		"NOTIFY_SOCKET=" + sd.path, "FDSTORE=64", "LISTEN_FDS=4",
		"LISTEN_FDNAMES=7@42.dev:other:7@42.state:9@1.dev"},
		storedDev, tempFile(t, "other"), storedState, half)
	sd.expect("FDSTOREREMOVE=1\nFDNAME=9@1.dev", 0)
	sd.expect("FDSTOREREMOVE=1\nFDNAME=9@1.state", 0)
	if got, want := readLine(t, out), fmt.Sprintf("7@42 %d %d", inode(dev2), inode(state2)); got != want {
		t.Fatalf("held at start: %q, want %q", got, want)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
}
