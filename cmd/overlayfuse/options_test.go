package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want config
	}{{
		name: "basic",
		args: []string{"-o", "lowerdir=/a:/b,upperdir=/u,workdir=/w", "/m"},
		want: config{Mountpoint: "/m", Layers: overlayfuse.Layers{Lower: []string{"/a", "/b"}, Upper: "/u", Work: "/w"}},
	}, {
		name: "mount.fuse3 order with source and generic options",
		args: []string{"overlayfuse", "/m", "-o", "rw,noatime,lowerdir=/a,dev,suid,noexec"},
		want: config{Mountpoint: "/m", Layers: overlayfuse.Layers{Lower: []string{"/a"}},
			Opts:    overlayfuse.Options{MountFlags: []string{"dev", "suid", "noexec"}},
			Ignored: []string{"noatime"}},
	}, {
		name: "several -o, glued -o, later wins",
		args: []string{"-o", "lowerdir=/x", "-olowerdir=/a", "-o", "upperdir=/u", "-o", "workdir=/w,ro", "/m"},
		want: config{Mountpoint: "/m", Layers: overlayfuse.Layers{Lower: []string{"/a"}, Upper: "/u", Work: "/w"},
			Opts: overlayfuse.Options{ReadOnly: true}},
	}, {
		name: "flags",
		args: []string{"-f", "-s", "-o", "lowerdir=/a,passthrough=off,consistency=strict,fsname=img", "/m"},
		want: config{Mountpoint: "/m", Foreground: true, Layers: overlayfuse.Layers{Lower: []string{"/a"}},
			Opts:    overlayfuse.Options{Passthrough: overlayfuse.PassthroughOff, Consistency: overlayfuse.ConsistencyStrict, FsName: "img"},
			Ignored: []string{"-s"}},
	}, {
		name: "-d implies -f",
		args: []string{"-d", "-o", "lowerdir=/a", "/m"},
		want: config{Mountpoint: "/m", Foreground: true, Layers: overlayfuse.Layers{Lower: []string{"/a"}}, Opts: overlayfuse.Options{Debug: true}},
	}, {
		name: "-o debug implies -f",
		args: []string{"-o", "lowerdir=/a,debug", "/m"},
		want: config{Mountpoint: "/m", Foreground: true, Layers: overlayfuse.Layers{Lower: []string{"/a"}}, Opts: overlayfuse.Options{Debug: true}},
	}, {
		name: "escaped comma and colon",
		args: []string{"-o", `lowerdir=/a\,b:/c\:d,upperdir=/u\\v,workdir=/w`, "/m"},
		want: config{Mountpoint: "/m", Layers: overlayfuse.Layers{Lower: []string{"/a,b", "/c:d"}, Upper: `/u\v`, Work: "/w"}},
	}, {
		name: "rw after ro, empty items, fstab words",
		args: []string{"-o", "ro,,lowerdir=/a,rw,x-systemd.automount,_netdev,defaults,allow_other,default_permissions,", "--", "/m"},
		want: config{Mountpoint: "/m", Layers: overlayfuse.Layers{Lower: []string{"/a"}},
			Ignored: []string{"x-systemd.automount", "_netdev"}},
	}, {
		// kernel overlayfs' and fuse-overlayfs' drop-in options.
		name: "volatile and xino",
		args: []string{"-o", "lowerdir=/a,upperdir=/u,workdir=/w,volatile,xino=auto,xino=on,xino=off", "/m"},
		want: config{Mountpoint: "/m", Layers: overlayfuse.Layers{Lower: []string{"/a"}, Upper: "/u", Work: "/w"},
			Opts:    overlayfuse.Options{Volatile: true},
			Ignored: []string{"xino=auto", "xino=on", "xino=off"}},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseArgs(tc.args)
			if err != nil {
				t.Fatalf("parseArgs(%q): %v", tc.args, err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("parseArgs(%q)\n got %+v\nwant %+v", tc.args, *got, tc.want)
			}
		})
	}
}

func TestParseArgsErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", "lowerdir=/a,bogus", "/m"}, `unknown option "bogus"`},
		{[]string{"-o", "lowerdir=/a,bogus=1", "/m"}, `unknown option "bogus=1"`},
		{[]string{"-x", "-o", "lowerdir=/a", "/m"}, `unknown flag "-x"`},
		{[]string{"-o", "lowerdir=/a"}, "no mountpoint"},
		{[]string{"-o", "lowerdir=/a", "src", "/m", "extra"}, "too many arguments"},
		{[]string{"/m"}, "missing lowerdir"},
		{[]string{"-o", "lowerdir=", "/m"}, "lowerdir needs a value"},
		{[]string{"-o", "lowerdir=/a::/b", "/m"}, "empty layer"},
		{[]string{"-o", "lowerdir=/a,upperdir=/u", "/m"}, "must be given together"},
		{[]string{"-o", "lowerdir=/a,workdir=/w", "/m"}, "must be given together"},
		{[]string{"-o", "lowerdir=/a,passthrough=yes", "/m"}, "want auto, on or off"},
		{[]string{"-o", "lowerdir=/a,consistency=weak", "/m"}, "want default or strict"},
		{[]string{"-o", "lowerdir=/a,ro=1", "/m"}, "takes no value"},
		{[]string{"-o", "lowerdir=/a,squash_to_root", "/m"}, "not supported"},
		{[]string{"-o", "lowerdir=/a,uidmapping=0:1000:1", "/m"}, "not supported"},
		{[]string{"-o"}, "-o needs an argument"},
		{[]string{"-o", "lowerdir=/a,xino=maybe", "/m"}, "want auto, on or off"},
		{[]string{"-o", "lowerdir=/a,volatile=1", "/m"}, "takes no value"},
	} {
		_, err := parseArgs(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseArgs(%q) = %v, want error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestParseArgsHelpVersion(t *testing.T) {
	for _, a := range []string{"-h", "--help"} {
		c, err := parseArgs([]string{a})
		if err != nil || !c.Help {
			t.Errorf("parseArgs(%s) = %+v, %v", a, c, err)
		}
	}
	for _, a := range []string{"-V", "--version"} {
		c, err := parseArgs([]string{a})
		if err != nil || !c.Version {
			t.Errorf("parseArgs(%s) = %+v, %v", a, c, err)
		}
	}
}

// layout makes lower, upper, work and mnt directories under a temp dir.
func layout(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for _, n := range []string{"l1", "l2", "u", "w", "m"} {
		if err := os.Mkdir(filepath.Join(d, n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(d, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestResolve(t *testing.T) {
	d := layout(t)
	t.Chdir(d)
	c, err := parseArgs([]string{"-o", "lowerdir=l1:" + d + "/l2,upperdir=u,workdir=./w", "m"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.resolve(); err != nil {
		t.Fatalf("resolve: %v", err)
	}
	want := overlayfuse.Layers{Lower: []string{d + "/l1", d + "/l2"}, Upper: d + "/u", Work: d + "/w"}
	if !reflect.DeepEqual(c.Layers, want) || c.Mountpoint != d+"/m" {
		t.Errorf("resolve: got %+v %s, want %+v %s/m", c.Layers, c.Mountpoint, want, d)
	}
}

func TestResolveErrors(t *testing.T) {
	d := layout(t)
	if err := os.Mkdir(filepath.Join(d, "u", "w"), 0o755); err != nil {
		t.Fatal(err)
	}
	// procfs is surely another filesystem than the temp dir.
	for _, tc := range []struct {
		opts, mnt, want string
	}{
		{"lowerdir=l1:nope", "m", "lowerdir " + d + "/nope: no such file or directory"},
		{"lowerdir=file", "m", "lowerdir " + d + "/file: not a directory"},
		{"lowerdir=l1,upperdir=nope,workdir=w", "m", "upperdir " + d + "/nope: no such file or directory"},
		{"lowerdir=l1,upperdir=u,workdir=nope", "m", "workdir " + d + "/nope: no such file or directory"},
		{"lowerdir=l1,upperdir=u,workdir=/proc", "m", "must be on the same filesystem"},
		{"lowerdir=l1,upperdir=u,workdir=u/w", "m", "must be separate subtrees"},
		{"lowerdir=l1,upperdir=u/w,workdir=u", "m", "must be separate subtrees"},
		{"lowerdir=l1,upperdir=u,workdir=u", "m", "must be separate subtrees"},
		{"lowerdir=l1", "nope", "mountpoint " + d + "/nope: no such file or directory"},
		{"lowerdir=l1", "file", "mountpoint " + d + "/file: not a directory"},
	} {
		t.Run(tc.opts+" "+tc.mnt, func(t *testing.T) {
			t.Chdir(d)
			c, err := parseArgs([]string{"-o", tc.opts, tc.mnt})
			if err != nil {
				t.Fatal(err)
			}
			err = c.resolve()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("resolve = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestSplitEscaped(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"a,b", []string{"a", "b"}},
		{"", []string{""}},
		{`a\,b,c`, []string{"a,b", "c"}},
		{`a\\,b`, []string{`a\`, "b"}},
		{`a\`, []string{`a\`}},
	} {
		if got := splitEscaped(tc.in, ',', true); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("splitEscaped(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
