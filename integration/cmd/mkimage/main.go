// Command mkimage writes the integration test images as OCI layout tars:
//
//	mkimage -kind cases -o cases.tar
//	mkimage -kind large -files 20000 -o large.tar
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"

	"github.com/overlayfuse/overlayfuse/integration/image"
)

func main() {
	kind := flag.String("kind", "cases", "image to write: cases or large")
	out := flag.String("o", "", "output tar (required)")
	files := flag.Int("files", 20000, "number of small files in the large image")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "mkimage: -o is required")
		os.Exit(2)
	}
	if err := run(*kind, *out, *files); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(kind, out string, files int) error {
	var (
		layers []image.Layer
		name   string
		err    error
	)
	switch kind {
	case "cases":
		name = image.CasesName
		layers, err = image.CasesLayers()
	case "large":
		name = image.LargeName
		layers, err = image.LargeLayers(files)
	default:
		return fmt.Errorf("unknown -kind %q", kind)
	}
	if err != nil {
		return err
	}
	// Write to a temporary name so a crash never leaves a half image.
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	if err := image.Write(w, name, layers, []string{"/bin/sh"}); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}
