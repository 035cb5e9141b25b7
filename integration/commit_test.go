package integration

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/overlayfuse/overlayfuse/integration/image"
)

const committed = "docker.io/overlayfuse/committed:latest"

// nerdctl commit of a changed container gives a layer with the right
// whiteouts, and the committed image runs and shows the changes.
func TestNerdctlCommit(t *testing.T) {
	e := newEnv(t)
	mustNerdctl(t, e, "load", "-i", casesTar)
	c := id("commit")
	t.Cleanup(func() { removeContainer(t, e, c) })
	mustNerdctl(t, e, "run", "--net", "none", "--name", c, image.CasesName, "/bin/sh", "-c",
		"rm /data/keep.txt && rm -r /data/owned && rm -r /data/opaque && mkdir /data/opaque && "+
			"echo only > /data/opaque/only && echo new > /data/new.txt && echo v4 > /data/overwrite.txt")
	mustNerdctl(t, e, "commit", c, committed)
	if snapshotter == "overlayfuse" {
		// The layer came from the upper dir, and went into the image's
		// snapshot without FUSE: our differ, not containerd's walking one.
		log := daemonLog(t, e)
		for _, w := range []string{"diff created from upper dir", "diff applied to upper dir"} {
			if !strings.Contains(log, w) {
				t.Errorf("daemon log lacks %q: the commit did not use our differ", w)
			}
		}
	}

	names := lastLayer(t, e, committed)
	want := []string{"data/.wh.keep.txt", "data/.wh.owned", "data/new.txt", "data/overwrite.txt", "data/opaque/only"}
	for _, w := range want {
		if !names[w] {
			t.Errorf("committed layer lacks %s", w)
		}
	}
	// The recreated directory hides new1 and new2: opaque, or one whiteout each.
	if !names["data/opaque/.wh..wh..opq"] && !(names["data/opaque/.wh.new1"] && names["data/opaque/.wh.new2"]) {
		t.Errorf("committed layer does not hide the old data/opaque entries")
	}
	for n := range names {
		if strings.Contains(n, ".wh.") && !strings.HasPrefix(n, "data/.wh.keep.txt") &&
			!strings.HasPrefix(n, "data/.wh.owned") && !strings.HasPrefix(n, "data/opaque/.wh.") {
			t.Errorf("committed layer has an unexpected whiteout %s", n)
		}
	}
	t.Logf("committed layer entries: %v", sortedKeys(names))

	out := mustNerdctl(t, e, "run", "--rm", "--net", "none", committed, "/bin/sh", "-c",
		"cd /data && ls; echo; ls opaque; cat new.txt overwrite.txt; test -e keep.txt || echo keep-gone")
	sameLines(t, "committed image", out,
		"abssym\ndangling\ndeldir\ndir2file\nfile2dir\nhard1\nhard2\nnew.txt\nopaque\noverwrite.txt\nreadd.txt\nsecret\nsuid\nsym\n\nonly\nnew\nv4\nkeep-gone\n")
}

// lastLayer exports ref with ctr and returns the entry names of its top layer.
func lastLayer(t *testing.T, e interface {
	Ctr(...string) (string, error)
}, ref string) map[string]bool {
	t.Helper()
	out := filepath.Join(t.TempDir(), "export.tar")
	if _, err := e.Ctr("images", "export", out, ref); err != nil {
		t.Fatal(err)
	}
	blobs, err := readTar(out)
	if err != nil {
		t.Fatal(err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(blobs["index.json"], &idx); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	var man ocispec.Manifest
	for desc := idx.Manifests[0]; ; {
		b, ok := blobs["blobs/sha256/"+desc.Digest.Encoded()]
		if !ok {
			t.Fatalf("export lacks %s", desc.Digest)
		}
		if desc.MediaType == ocispec.MediaTypeImageIndex || strings.Contains(desc.MediaType, "manifest.list") {
			var sub ocispec.Index
			if err := json.Unmarshal(b, &sub); err != nil || len(sub.Manifests) == 0 {
				t.Fatalf("nested index %s: %v", desc.Digest, err)
			}
			desc = sub.Manifests[0]
			continue
		}
		if err := json.Unmarshal(b, &man); err != nil {
			t.Fatalf("manifest: %v", err)
		}
		break
	}
	top := man.Layers[len(man.Layers)-1]
	layer := blobs["blobs/sha256/"+top.Digest.Encoded()]
	if layer == nil {
		t.Fatalf("export lacks layer %s", top.Digest)
	}
	names, err := layerNames(layer, strings.Contains(top.MediaType, "gzip"))
	if err != nil {
		t.Fatalf("layer %s: %v", top.Digest, err)
	}
	return names
}

func readTar(path string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return m, nil
		}
		if err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if m[h.Name], err = io.ReadAll(tr); err != nil {
				return nil, err
			}
		}
	}
}

func layerNames(b []byte, gz bool) (map[string]bool, error) {
	var r io.Reader = strings.NewReader(string(b))
	if gz {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		r = zr
	}
	names := map[string]bool{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read layer: %w", err)
		}
		names[strings.TrimSuffix(strings.TrimPrefix(h.Name, "/"), "/")] = true
	}
}

func sortedKeys(m map[string]bool) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

func daemonLog(t *testing.T, e interface{ DaemonLog() (string, error) }) string {
	t.Helper()
	log, err := e.DaemonLog()
	if err != nil {
		t.Fatal(err)
	}
	return log
}
