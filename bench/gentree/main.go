// Command gentree writes a deterministic tree of small files for the
// benchmarks, as a directory or as a tar stream, much faster than a shell
// loop can.
package main

import (
	"archive/tar"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"
)

func main() {
	dir := flag.String("dir", "", "create the tree in this directory")
	tarOut := flag.String("tar", "", "write the tree as a tar file instead")
	files := flag.Int("files", 50000, "number of regular files")
	perDir := flag.Int("per-dir", 100, "files per leaf directory")
	maxSize := flag.Int("max-size", 2048, "largest file size in bytes (sizes are uniform in [0, max])")
	flag.Parse()
	if (*dir == "") == (*tarOut == "") || *files < 0 || *perDir < 1 || *maxSize < 0 {
		fmt.Fprintln(os.Stderr, "gentree: want exactly one of -dir or -tar, and non-negative sizes")
		os.Exit(2)
	}
	var err error
	if *dir != "" {
		err = walk(*files, *perDir, *maxSize, writeDir(*dir))
	} else {
		err = writeTar(*tarOut, *files, *perDir, *maxSize)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "gentree: %v\n", err)
		os.Exit(1)
	}
}

// emit receives each directory (data == nil) before its files.
type emit func(path string, data []byte, isDir bool) error

// walk lays files out two levels deep (tNNN/sNNN/fNNNNN), about as wide as
// deep, so no directory is unrealistically large.
func walk(files, perDir, maxSize int, out emit) error {
	rng := rand.New(rand.NewPCG(1, 2)) // same tree every run
	buf := make([]byte, maxSize)
	for i := range buf {
		buf[i] = byte('a' + i%26)
	}
	leaves := (files + perDir - 1) / perDir
	fanout := 1
	for fanout*fanout < leaves {
		fanout++
	}
	n := 0
	for t := 0; n < files; t++ {
		top := fmt.Sprintf("t%03d", t)
		if err := out(top, nil, true); err != nil {
			return err
		}
		for s := 0; s < fanout && n < files; s++ {
			sub := filepath.Join(top, fmt.Sprintf("s%03d", s))
			if err := out(sub, nil, true); err != nil {
				return err
			}
			for f := 0; f < perDir && n < files; f++ {
				size := rng.IntN(maxSize + 1)
				if err := out(filepath.Join(sub, fmt.Sprintf("f%05d", n)), buf[:size], false); err != nil {
					return err
				}
				n++
			}
		}
	}
	return nil
}

func writeDir(root string) emit {
	return func(p string, data []byte, isDir bool) error {
		p = filepath.Join(root, p)
		if isDir {
			return os.MkdirAll(p, 0o755)
		}
		return os.WriteFile(p, data, 0o644)
	}
}

func writeTar(name string, files, perDir, maxSize int) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	mtime := time.Unix(1700000000, 0)
	err = walk(files, perDir, maxSize, func(p string, data []byte, isDir bool) error {
		h := &tar.Header{Name: p, Mode: 0o644, Size: int64(len(data)), ModTime: mtime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if isDir {
			h.Name, h.Mode, h.Size, h.Typeflag = p+"/", 0o755, 0, tar.TypeDir
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
