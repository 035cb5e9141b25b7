package overlayfuse

import (
	"fmt"
	"log"
)

// Layers names the directories an overlay is made of.
type Layers struct {
	// Lower are the read-only layers, topmost first (as overlayfs' lowerdir=).
	Lower []string
	// Upper receives every change. Empty means a read-only overlay.
	Upper string
	// Work is a scratch directory on the upper's filesystem; copy-ups are
	// built there and renamed into place. Required with Upper.
	Work string
}

// Passthrough selects FUSE passthrough for file I/O (kernel >= 6.9).
type Passthrough string

const (
	// PassthroughAuto uses passthrough when the kernel accepts it and
	// falls back to serving I/O in process otherwise.
	PassthroughAuto Passthrough = "auto"
	// PassthroughOn fails the mount when passthrough cannot be used.
	PassthroughOn Passthrough = "on"
	// PassthroughOff serves all I/O in process.
	PassthroughOff Passthrough = "off"
)

// Consistency selects what a file descriptor opened read-only before a
// copy-up sees afterwards.
type Consistency string

const (
	// ConsistencyDefault lets lower files use passthrough; a fd opened
	// read-only before a copy-up may keep seeing the old data.
	ConsistencyDefault Consistency = "default"
	// ConsistencyStrict never passes lower files through, so read() and
	// MAP_SHARED maps of such a fd see data written after the copy-up.
	ConsistencyStrict Consistency = "strict"
)

// Options tune a mount. The zero value is a sensible default.
type Options struct {
	// ReadOnly mounts the overlay read-only even if Layers.Upper is set.
	ReadOnly bool
	// Passthrough defaults to PassthroughAuto.
	Passthrough Passthrough
	// Consistency defaults to ConsistencyDefault.
	Consistency Consistency
	// FsName is shown as the source in /proc/mounts (default "overlayfuse").
	FsName string
	// Debug logs every FUSE request.
	Debug bool
	// Logger receives diagnostics; nil means the standard logger.
	Logger *log.Logger
	// MountFlags are mount flags by name: nosuid, nodev, noexec (or suid,
	// dev, exec). The overlay mounts suid and dev, as kernel overlayfs
	// does: a container's setuid programs and device nodes must work.
	MountFlags []string
	// Volatile drops every fsync, fdatasync and syncfs on the way to the
	// upper filesystem (file and directory fsync, copy-up's fdatasync),
	// as kernel overlayfs' volatile option: faster, but after a crash the
	// upper dir may be inconsistent and must be thrown away. The mount
	// leaves <work>/work/incompat/volatile, as the kernel does, so that
	// neither it nor we mount such an upper again until it is removed; a
	// clean unmount syncs the upper and removes it.
	Volatile bool
	// Metrics, if set, is told of every FUSE request, copy-up and open.
	Metrics Metrics
	// UIDMap and GIDMap, both or neither, serve the overlay for an
	// idmapped mount with this mapping (FUSE_ALLOW_IDMAP, Linux 6.12;
	// Mount fails without it): the lower layers hold container ids, the
	// upper layer the host ids the mapping gives them, and the mount
	// shows container ids, so its idmapped bind mounts show host ids.
	// New objects and copy-ups get host ids in the upper layer; no layer
	// is ever chowned.
	UIDMap, GIDMap []IDMapping
}

// ParsePassthrough parses a passthrough setting; empty means
// PassthroughAuto.
func ParsePassthrough(s string) (Passthrough, error) {
	switch p := Passthrough(s); p {
	case "":
		return PassthroughAuto, nil
	case PassthroughAuto, PassthroughOn, PassthroughOff:
		return p, nil
	}
	return "", fmt.Errorf("passthrough=%q: want auto, on or off", s)
}

// ParseConsistency parses a consistency setting; empty means
// ConsistencyDefault.
func ParseConsistency(s string) (Consistency, error) {
	switch c := Consistency(s); c {
	case "":
		return ConsistencyDefault, nil
	case ConsistencyDefault, ConsistencyStrict:
		return c, nil
	}
	return "", fmt.Errorf("consistency=%q: want default or strict", s)
}

// Validate reports the first setting Mount would reject.
func (o *Options) Validate() error {
	if _, err := ParsePassthrough(string(o.Passthrough)); err != nil {
		return err
	}
	if _, err := ParseConsistency(string(o.Consistency)); err != nil {
		return err
	}
	if (len(o.UIDMap) == 0) != (len(o.GIDMap) == 0) {
		return fmt.Errorf("an id mapping needs both a uid and a gid mapping")
	}
	if err := validateIDMapping("uid", o.UIDMap); err != nil {
		return err
	}
	if err := validateIDMapping("gid", o.GIDMap); err != nil {
		return err
	}
	for _, f := range o.MountFlags {
		switch f {
		case "suid", "nosuid", "dev", "nodev", "exec", "noexec":
		default:
			return fmt.Errorf("mount flag %q: want [no]suid, [no]dev or [no]exec", f)
		}
	}
	return nil
}

// setDefaults validates o and fills in what is left empty.
func (o *Options) setDefaults() error {
	if err := o.Validate(); err != nil {
		return err
	}
	// Valid, so the parses cannot fail.
	o.Passthrough, _ = ParsePassthrough(string(o.Passthrough))
	o.Consistency, _ = ParseConsistency(string(o.Consistency))
	if o.FsName == "" {
		o.FsName = "overlayfuse"
	}
	if o.Logger == nil {
		o.Logger = log.Default()
	}
	return nil
}
