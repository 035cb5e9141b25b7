package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"golang.org/x/sys/unix"

	"github.com/overlayfuse/overlayfuse/overlayfuse"
)

const (
	defaultAddress           = "/run/containerd-overlay-grpc/containerd-overlay-grpc.sock"
	defaultRoot              = "/var/lib/containerd-overlay-grpc"
	defaultContainerdAddress = "/run/containerd/containerd.sock"
)

// config is the daemon's configuration. The TOML keys are the flag names.
type config struct {
	Address     string `toml:"address"`
	Root        string `toml:"root"`
	LogLevel    string `toml:"log-level"`
	Passthrough string `toml:"passthrough"`
	Consistency string `toml:"consistency"`
	// MetricsAddress is a host:port to serve Prometheus /metrics on;
	// empty serves none.
	MetricsAddress string `toml:"metrics-address"`
	// ContainerdAddress is containerd's socket, whose content store the
	// differ reads and writes layers in.
	ContainerdAddress string `toml:"containerd-address"`
}

func defaultConfig() config {
	return config{
		Address:     defaultAddress,
		Root:        defaultRoot,
		LogLevel:    "info",
		Passthrough: string(overlayfuse.PassthroughAuto),
		Consistency: string(overlayfuse.ConsistencyDefault),

		ContainerdAddress: defaultContainerdAddress,
	}
}

// errHelp asks for the usage text and a zero exit status.
var errHelp = errors.New("help requested")

// options is what the command line asked for.
type options struct {
	config  config
	version bool
}

// parseArgs reads the flags, then the config file they name; a flag given
// on the command line wins over the file.
func parseArgs(args []string, usage io.Writer) (options, error) {
	var (
		o          options
		configFile string
		flags      config
	)
	def := defaultConfig()
	fs := flag.NewFlagSet("containerd-overlay-grpc", flag.ContinueOnError)
	fs.SetOutput(new(bytes.Buffer)) // we print one line of our own
	fs.StringVar(&flags.Address, "address", def.Address, "unix socket to serve the snapshots API on")
	fs.StringVar(&flags.Root, "root", def.Root, "directory for the metadata and the snapshots")
	fs.StringVar(&flags.LogLevel, "log-level", def.LogLevel, "trace (also logs every FUSE request), debug, info, warn or error")
	fs.StringVar(&flags.Passthrough, "passthrough", def.Passthrough, "FUSE passthrough: auto, on or off")
	fs.StringVar(&flags.Consistency, "consistency", def.Consistency, "default or strict")
	fs.StringVar(&flags.MetricsAddress, "metrics-address", "", "host:port to serve Prometheus metrics on at /metrics (default none)")
	fs.StringVar(&flags.ContainerdAddress, "containerd-address", def.ContainerdAddress, "containerd's socket: the differ keeps layers in its content store")
	fs.StringVar(&configFile, "config", "", "TOML file whose keys are the flag names (but config and version)")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(usage, "Usage: containerd-overlay-grpc [flags]\n       containerd-overlay-grpc unmount-all [--root DIR | --config FILE]\n\n"+
				"Serves the overlayfuse snapshotter to containerd over gRPC. The containers'\n"+
				"mounts outlive the daemon: SIGTERM hands them over to the next daemon on the\n"+
				"same root (the same or a new version), and so does a crash; unmount-all ends\n"+
				"them once the daemon is stopped.\n\nFlags:\n")
			fs.SetOutput(usage)
			fs.PrintDefaults()
			fmt.Fprint(usage, subcommandUsage)
			return o, errHelp
		}
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.version {
		return o, nil
	}

	o.config = def
	if configFile != "" {
		if err := loadConfigFile(configFile, &o.config); err != nil {
			return o, err
		}
	}
	flagged := map[string]bool{}
	fs.Visit(func(f *flag.Flag) {
		flagged[f.Name] = true
		switch f.Name {
		case "address":
			o.config.Address = flags.Address
		case "root":
			o.config.Root = flags.Root
		case "log-level":
			o.config.LogLevel = flags.LogLevel
		case "passthrough":
			o.config.Passthrough = flags.Passthrough
		case "consistency":
			o.config.Consistency = flags.Consistency
		case "metrics-address":
			o.config.MetricsAddress = flags.MetricsAddress
		case "containerd-address":
			o.config.ContainerdAddress = flags.ContainerdAddress
		}
	})
	err := o.config.validate()
	// A bad value that came from the file is reported with the file's name.
	var ve *valueError
	if errors.As(err, &ve) && configFile != "" && !flagged[ve.key] {
		err = fmt.Errorf("config %s: key %w", configFile, err)
	}
	return o, err
}

func loadConfigFile(path string, c *config) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields() // a misspelt key must not be ignored
	if err := dec.Decode(c); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) {
			var keys []string
			for _, e := range strict.Errors {
				keys = append(keys, strings.Join(e.Key(), "."))
			}
			return fmt.Errorf("config %s: unknown key %s", path, strings.Join(keys, ", "))
		}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			if k := de.Key(); len(k) > 0 {
				return fmt.Errorf("config %s:%d:%d: key %s: %v", path, row, col, strings.Join(k, "."), de.Error())
			}
			return fmt.Errorf("config %s:%d:%d: %v", path, row, col, de.Error())
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// maxSocketPath is the longest path a unix socket can be bound to:
// sun_path holds 108 bytes, the terminating NUL included.
const maxSocketPath = len(unix.RawSockaddrUnix{}.Path) - 1

// valueError is a bad value of one key (a flag name and config file key).
type valueError struct {
	key, value, want string
}

func (e *valueError) Error() string {
	return fmt.Sprintf("%s %q: %s", e.key, e.value, e.want)
}

func (c config) validate() error {
	if c.Address == "" {
		return &valueError{"address", c.Address, "want a socket path"}
	}
	if len(c.Address) > maxSocketPath {
		return &valueError{"address", c.Address, fmt.Sprintf("%d bytes long, but a unix socket path may have at most %d", len(c.Address), maxSocketPath)}
	}
	if c.ContainerdAddress == "" {
		return &valueError{"containerd-address", c.ContainerdAddress, "want a socket path"}
	}
	if c.Root == "" {
		return &valueError{"root", c.Root, "want a directory"}
	}
	switch c.LogLevel {
	case "trace", "debug", "info", "warn", "error":
	default:
		return &valueError{"log-level", c.LogLevel, "want trace, debug, info, warn or error"}
	}
	if _, err := overlayfuse.ParsePassthrough(c.Passthrough); err != nil {
		return &valueError{"passthrough", c.Passthrough, "want auto, on or off"}
	}
	if _, err := overlayfuse.ParseConsistency(c.Consistency); err != nil {
		return &valueError{"consistency", c.Consistency, "want default or strict"}
	}
	return nil
}
