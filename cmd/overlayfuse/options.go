package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

// config is everything the command line asks for.
type config struct {
	Mountpoint string
	Layers     overlayfuse.Layers
	Opts       overlayfuse.Options
	Foreground bool
	Help       bool
	Version    bool
	// Ignored lists accepted options that change nothing here (atime
	// flags, fuse-overlayfs tuning hints), so -d can say so.
	Ignored []string
}

// parseArgs reads fuse-overlayfs' command line:
//
//	overlayfuse [-f] [-d] [-s] -o OPTS [-o OPTS…] [SOURCE] MOUNTPOINT
//
// Options and operands may come in any order because mount.fuse3 runs
// `overlayfuse SOURCE MOUNTPOINT -o OPTS`. SOURCE is ignored.
func parseArgs(args []string) (*config, error) {
	c := &config{}
	var operands []string
	var opts []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			operands = append(operands, args[i+1:]...)
			i = len(args)
		case a == "-h" || a == "--help":
			c.Help = true
		case a == "-V" || a == "--version":
			c.Version = true
		case a == "-f":
			c.Foreground = true
		case a == "-d":
			c.Foreground = true
			c.Opts.Debug = true
		case a == "-s":
			// libfuse's single-thread flag; go-fuse always serves
			// concurrently, which is only faster.
			c.Ignored = append(c.Ignored, a)
		case a == "-o":
			if i+1 >= len(args) {
				return nil, errors.New("-o needs an argument")
			}
			i++
			opts = append(opts, args[i])
		case strings.HasPrefix(a, "-o"):
			opts = append(opts, a[2:])
		case strings.HasPrefix(a, "-") && a != "-":
			return nil, fmt.Errorf("unknown flag %q (see --help)", a)
		default:
			operands = append(operands, a)
		}
	}
	if c.Help || c.Version {
		return c, nil
	}
	for _, o := range opts {
		for _, kv := range splitEscaped(o, ',', false) {
			if err := c.applyOption(kv); err != nil {
				return nil, err
			}
		}
	}
	switch len(operands) {
	case 0:
		return nil, errors.New("no mountpoint given (see --help)")
	case 1:
		c.Mountpoint = operands[0]
	case 2:
		c.Mountpoint = operands[1]
	default:
		return nil, fmt.Errorf("too many arguments: %q", operands)
	}
	if len(c.Layers.Lower) == 0 {
		return nil, errors.New("missing lowerdir= option")
	}
	if (c.Layers.Upper == "") != (c.Layers.Work == "") {
		return nil, errors.New("upperdir= and workdir= must be given together")
	}
	return c, nil
}

// genericOptions are mount(8) and FUSE options that mount.fuse3, fstab or
// fuse-overlayfs users pass. They are accepted so that the command is a
// drop-in; the value tells what we do with it.
var genericOptions = map[string]string{
	// Mount flags: [no]suid, [no]dev and [no]exec are passed on (flag);
	// the overlay mounts suid,dev,exec unless told otherwise.
	"dev": "flag", "nodev": "flag", "suid": "flag", "nosuid": "flag",
	"exec": "flag", "noexec": "flag",
	"atime": "default", "noatime": "ignored", "relatime": "ignored", "norelatime": "default",
	"strictatime": "ignored", "nostrictatime": "default", "diratime": "default",
	"nodiratime": "ignored", "lazytime": "ignored", "nolazytime": "default",
	"sync": "ignored", "async": "default", "dirsync": "ignored",
	"mand": "ignored", "nomand": "default", "silent": "ignored", "loud": "default",
	"iversion": "ignored", "noiversion": "default",
	// fstab-only words that mount(8) or mount.fuse3 usually strip.
	"defaults": "default", "auto": "ignored", "noauto": "ignored", "user": "ignored",
	"nouser": "ignored", "users": "ignored", "owner": "ignored", "group": "ignored",
	"_netdev": "ignored", "nofail": "ignored",
	// FUSE options: the library always mounts allow_other with the kernel
	// checking permissions, as a root-run fuse-overlayfs does.
	"allow_other": "default", "allow_root": "ignored", "default_permissions": "default",
	"auto_unmount": "ignored", "clone_fd": "ignored",
	// fuse-overlayfs tuning hints with no semantic effect here: we always
	// fsync when asked, cache as long as is safe and pick inode numbers
	// ourselves.
	"fast_ino": "ignored", "threaded": "ignored", "fsync": "ignored", "writeback": "ignored",
	"timeout": "ignored", "static_nlink": "ignored", "noacl": "ignored",
	"max_threads": "ignored", "max_idle_threads": "ignored", "max_read": "ignored",
}

// unsupportedOptions change semantics in fuse-overlayfs or kernel overlayfs
// in ways we do not implement, so silently accepting them would lie.
var unsupportedOptions = map[string]bool{
	"squash_to_root": true, "squash_to_uid": true, "squash_to_gid": true,
	"uidmapping": true, "gidmapping": true, "noxattrs": true, "xattr_permissions": true,
	"plugins": true, "redirect_dir": true, "index": true,
	"metacopy": true, "userxattr": true, "nfs_export": true,
	"context": true, "fscontext": true, "defcontext": true, "rootcontext": true,
}

// applyOption applies one key[=value] of -o.
func (c *config) applyOption(kv string) error {
	if kv == "" {
		return nil // "a,,b" and a trailing comma, as libfuse allows.
	}
	key, val, hasVal := strings.Cut(kv, "=")
	if key != "lowerdir" {
		// lowerdir keeps its escapes until it is split at ':'.
		val = unescape(val)
	}
	needVal := func() error {
		if !hasVal || val == "" {
			return fmt.Errorf("option %s needs a value", key)
		}
		return nil
	}
	switch key {
	case "lowerdir":
		if err := needVal(); err != nil {
			return err
		}
		c.Layers.Lower = nil
		for _, d := range splitEscaped(val, ':', true) {
			if d == "" {
				return fmt.Errorf("lowerdir=%s: empty layer", val)
			}
			c.Layers.Lower = append(c.Layers.Lower, d)
		}
		return nil
	case "upperdir":
		if err := needVal(); err != nil {
			return err
		}
		c.Layers.Upper = val
		return nil
	case "workdir":
		if err := needVal(); err != nil {
			return err
		}
		c.Layers.Work = val
		return nil
	case "ro", "rw":
		if hasVal {
			return fmt.Errorf("option %s takes no value", key)
		}
		c.Opts.ReadOnly = key == "ro"
		return nil
	case "debug":
		c.Opts.Debug = true
		c.Foreground = true // as libfuse's -o debug
		return nil
	case "passthrough":
		p, err := overlayfuse.ParsePassthrough(val)
		c.Opts.Passthrough = p
		return err
	case "consistency":
		cs, err := overlayfuse.ParseConsistency(val)
		c.Opts.Consistency = cs
		return err
	case "fsname":
		if err := needVal(); err != nil {
			return err
		}
		c.Opts.FsName = val
		return nil
	case "volatile":
		if hasVal {
			return fmt.Errorf("option %s takes no value", key)
		}
		c.Opts.Volatile = true
		return nil
	case "xino":
		// Inode numbers are always unique across layers here (the
		// layer's filesystem index in the top bits) and stable across
		// copy-up: on and auto are what we do anyway, and off cannot
		// make them collide, so all three are accepted and change
		// nothing.
		switch val {
		case "auto", "on", "off":
			c.Ignored = append(c.Ignored, kv)
			return nil
		}
		return fmt.Errorf("xino=%s: want auto, on or off", val)
	case "subtype":
		// The type is always fuse.overlayfuse; mount.fuse3 may name it.
		c.Ignored = append(c.Ignored, kv)
		return nil
	}
	if unsupportedOptions[key] {
		return fmt.Errorf("option %s is not supported by overlayfuse", key)
	}
	if strings.HasPrefix(key, "x-") || key == "comment" {
		c.Ignored = append(c.Ignored, kv) // fstab annotations for userspace
		return nil
	}
	if what, ok := genericOptions[key]; ok {
		switch what {
		case "ignored":
			c.Ignored = append(c.Ignored, kv)
		case "flag":
			c.Opts.MountFlags = append(c.Opts.MountFlags, key)
		}
		return nil
	}
	return fmt.Errorf("unknown option %q", kv)
}

// splitEscaped splits s at sep, honouring backslash escapes as overlayfs
// does for ',' in options and ':' in lowerdir; drop removes the escapes.
func splitEscaped(s string, sep byte, drop bool) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s):
			if !drop {
				cur.WriteByte('\\')
			}
			i++
			cur.WriteByte(s[i])
		case s[i] == sep:
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(s[i])
		}
	}
	return append(out, cur.String())
}

// unescape removes backslash escapes.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// resolve makes every path absolute (the server leaves the working
// directory) and checks the directories before anything is mounted, so
// mistakes get one clear line instead of a half-started server.
func (c *config) resolve() error {
	abs := func(what, p string) (string, error) {
		a, err := filepath.Abs(p)
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", what, p, err)
		}
		if err := checkDir(what, a); err != nil {
			return "", err
		}
		return a, nil
	}
	var err error
	for i, d := range c.Layers.Lower {
		if c.Layers.Lower[i], err = abs("lowerdir", d); err != nil {
			return err
		}
	}
	if c.Layers.Upper != "" {
		if c.Layers.Upper, err = abs("upperdir", c.Layers.Upper); err != nil {
			return err
		}
		if c.Layers.Work, err = abs("workdir", c.Layers.Work); err != nil {
			return err
		}
		if err := checkUpperWork(c.Layers.Upper, c.Layers.Work); err != nil {
			return err
		}
	}
	if c.Mountpoint, err = abs("mountpoint", c.Mountpoint); err != nil {
		return err
	}
	return nil
}

// checkDir reports a missing or non-directory path.
func checkDir(what, p string) error {
	st, err := os.Stat(p)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("%s %s: %w", what, p, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%s %s: not a directory", what, p)
	}
	return nil
}

// checkUpperWork enforces what kernel overlayfs requires: copy-ups are
// renamed from workdir into upperdir, so both must be on one filesystem and
// neither may contain the other.
func checkUpperWork(upper, work string) error {
	var su, sw unix.Stat_t
	if err := unix.Stat(upper, &su); err != nil {
		return fmt.Errorf("upperdir %s: %w", upper, err)
	}
	if err := unix.Stat(work, &sw); err != nil {
		return fmt.Errorf("workdir %s: %w", work, err)
	}
	if su.Dev != sw.Dev {
		return fmt.Errorf("workdir %s and upperdir %s must be on the same filesystem", work, upper)
	}
	ru, err := filepath.EvalSymlinks(upper)
	if err != nil {
		return fmt.Errorf("upperdir %s: %w", upper, err)
	}
	rw, err := filepath.EvalSymlinks(work)
	if err != nil {
		return fmt.Errorf("workdir %s: %w", work, err)
	}
	if within(ru, rw) || within(rw, ru) {
		return fmt.Errorf("workdir %s and upperdir %s must be separate subtrees", work, upper)
	}
	return nil
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
