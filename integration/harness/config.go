package harness

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"

	"github.com/pelletier/go-toml/v2"
)

// The CRI plugins want CNI and a sandbox image (pulled from a registry, which
// these machines cannot reach), and slow every start; only the test of the
// example's CRI stanza (Options.CRI) runs them.
var criPlugins = []string{
	"io.containerd.grpc.v1.cri",
	"io.containerd.cri.v1.images",
	"io.containerd.cri.v1.runtime",
	"io.containerd.podsandbox.controller.v1.podsandbox",
	"io.containerd.sandbox.controller.v1.shim",
}

const transferPlugin = "io.containerd.transfer.v1.local"

// writeConfig writes a containerd config for env e: the example config
// (config.toml.example) as it is, with only what must differ for a private
// containerd changed: its paths and sockets, the daemon's socket and root,
// CRI off unless asked for, and an unpack entry for the built-in overlayfs
// snapshotter (the baseline) if the example has none.
func (e *Env) writeConfig(example string) error {
	if example == "" {
		return errors.New("no containerd config: Options.ConfigExa must name config.toml.example")
	}
	b, err := os.ReadFile(example)
	if err != nil {
		return fmt.Errorf("read containerd config example: %w", err)
	}
	cfg := map[string]any{}
	if err := toml.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("parse %s: %w", example, err)
	}
	cfg["root"] = e.Root
	cfg["state"] = e.State
	cfg["debug"] = merge(cfg["debug"], map[string]any{"level": "debug"})

	plugins, _ := cfg["plugins"].(map[string]any)
	if plugins == nil {
		plugins = map[string]any{}
		cfg["plugins"] = plugins
	}
	// The server plugins of config version 4; a version 3 file (given by
	// OVERLAYFUSE_CONTAINERD_CONFIG) takes them too, as containerd's
	// migration keeps plugin stanzas that are set.
	for id, set := range map[string]map[string]any{
		"io.containerd.server.v1.grpc":    {"address": e.Address},
		"io.containerd.server.v1.ttrpc":   {"address": e.Address + ".ttrpc"},
		"io.containerd.server.v1.debug":   {"address": ""},
		"io.containerd.server.v1.metrics": {"address": ""},
	} {
		plugins[id] = merge(plugins[id], set)
	}

	if !e.opts.CRI {
		dis, _ := cfg["disabled_plugins"].([]any)
		for _, p := range criPlugins {
			dis = append(dis, p)
		}
		cfg["disabled_plugins"] = dis
	}

	// Every proxy plugin (snapshot, and diff if any) is served by our daemon.
	pp, _ := cfg["proxy_plugins"].(map[string]any)
	if _, ok := pp["overlayfuse"]; !ok {
		return fmt.Errorf("%s has no [proxy_plugins.overlayfuse]", example)
	}
	for name, v := range pp {
		m := merge(v, map[string]any{"address": e.DaemonAddress})
		if ex, ok := m["exports"].(map[string]any); ok && ex["root"] != nil {
			ex["root"] = e.DaemonRoot
		}
		pp[name] = m
	}
	if e.opts.Daemon == "" {
		// Baseline runs have no daemon to answer a diff call: containerd's
		// own differs only.
		const diffService = "io.containerd.service.v1.diff-service"
		ds, _ := plugins[diffService].(map[string]any)
		order, _ := ds["default"].([]any)
		for name, v := range pp {
			if m, _ := v.(map[string]any); m["type"] == "diff" {
				delete(pp, name)
				order = slices.DeleteFunc(order, func(n any) bool { return n == name })
			}
		}
		if ds != nil {
			ds["default"] = order
		}
	}

	tr, _ := plugins[transferPlugin].(map[string]any)
	if tr == nil {
		tr = map[string]any{}
		plugins[transferPlugin] = tr
	}
	uc, _ := tr["unpack_config"].([]any)
	has := false
	for _, u := range uc {
		if m, ok := u.(map[string]any); ok && m["snapshotter"] == "overlayfs" {
			has = true
		}
	}
	if !has {
		uc = append(uc, map[string]any{"platform": "linux/" + runtime.GOARCH, "snapshotter": "overlayfs"})
	}
	tr["unpack_config"] = uc

	b, err = toml.Marshal(cfg)
	if err != nil {
		return err
	}
	return os.WriteFile(e.ConfigPath, b, 0o644)
}

// merge sets keys of set on the table old (nil or a map) and returns it.
func merge(old any, set map[string]any) map[string]any {
	m, _ := old.(map[string]any)
	if m == nil {
		m = map[string]any{}
	}
	for k, v := range set {
		m[k] = v
	}
	return m
}
