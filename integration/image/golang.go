package image

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// GoName is the Go toolchain image: the base layer and the host's GOROOT.
const GoName = "docker.io/overlayfuse/go:local"

// GoLayers returns the base layer and a layer holding what of goroot
// building and testing a module needs, at /usr/local/go: the go command,
// the compiler and linker tools, and the standard library's sources (not
// the toolchain's own, under src/cmd, nor test data).
func GoLayers(goroot string) ([]Layer, error) {
	base, err := Base()
	if err != nil {
		return nil, err
	}
	l := Layer{Dir("usr", 0o755), Dir("usr/local", 0o755), Dir("usr/local/go", 0o755)}
	skip := map[string]bool{"api": true, "doc": true, "misc": true, "test": true, "lib/wasm": true, "src/cmd": true}
	err = filepath.WalkDir(goroot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(goroot, p)
		if err != nil || rel == "." {
			return err
		}
		if skip[rel] || d.Name() == "testdata" {
			return filepath.SkipDir
		}
		name := "usr/local/go/" + rel
		fi, err := d.Info()
		if err != nil {
			return err
		}
		mode := int64(fi.Mode().Perm())
		switch {
		case d.IsDir():
			l = append(l, Dir(name, mode))
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			l = append(l, Symlink(name, target))
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			l = append(l, File(name, string(b), mode))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return []Layer{base, l}, nil
}

// GoModule is a small module that the Go build Dockerfile builds and tests.
var GoModule = map[string]string{
	"go.mod": "module example.com/hello\n\ngo 1.22\n",
	"hello.go": strings.Join([]string{
		"package main",
		"",
		`import "fmt"`,
		"",
		"func greeting(name string) string { return fmt.Sprintf(\"hello, %s\", name) }",
		"",
		`func main() { fmt.Println(greeting("overlayfuse")) }`,
		"",
	}, "\n"),
	"hello_test.go": strings.Join([]string{
		"package main",
		"",
		`import "testing"`,
		"",
		"func TestGreeting(t *testing.T) {",
		`	if got := greeting("x"); got != "hello, x" {`,
		`		t.Fatalf("greeting: %q", got)`,
		"	}",
		"}",
		"",
	}, "\n"),
}

// GoDockerfile builds and tests GoModule on the Go image, and puts the
// static binary alone in the image.
const GoDockerfile = `FROM ` + GoName + ` AS build
ENV PATH=/usr/local/go/bin:/bin GOTOOLCHAIN=local CGO_ENABLED=0 HOME=/root GOCACHE=/root/.cache/go-build GOFLAGS=-buildvcs=false
WORKDIR /src
COPY go.mod *.go ./
RUN go build -o /out/hello . && go test ./...

FROM scratch
COPY --from=build /out/hello /hello
CMD ["/hello"]
`
