package harness

import (
	"fmt"
	"os"
	"runtime"

	"github.com/pelletier/go-toml/v2"
)

// Plugins we never use here: CRI wants CNI and a sandbox image, and slows the start.
var disabledPlugins = []string{
	"io.containerd.grpc.v1.cri",
	"io.containerd.cri.v1.images",
	"io.containerd.cri.v1.runtime",
	"io.containerd.podsandbox.controller.v1.podsandbox",
	"io.containerd.sandbox.controller.v1.shim",
}

const transferPlugin = "io.containerd.transfer.v1.local"

// defaultConfig is what /work/main/config.toml.example must hold for us: the
// proxy snapshotter and transfer unpack entries for it.
func defaultConfig() map[string]any {
	return map[string]any{
		"version": 3,
		"proxy_plugins": map[string]any{
			"overlayfuse": map[string]any{"type": "snapshot", "address": "/run/containerd-overlay-grpc/overlayfuse.sock"},
		},
		"plugins": map[string]any{
			transferPlugin: map[string]any{
				"unpack_config": []any{
					map[string]any{"platform": "linux/" + runtime.GOARCH, "snapshotter": "overlayfuse"},
				},
			},
		},
	}
}

// writeConfig writes a containerd config for env e: the example config (or
// the default above) with every path moved into the private directory, CRI
// off, and an unpack entry for the built-in overlayfs snapshotter as baseline.
func (e *Env) writeConfig(example string) error {
	cfg := defaultConfig()
	if example != "" {
		b, err := os.ReadFile(example)
		if err != nil {
			return fmt.Errorf("read containerd config example: %w", err)
		}
		cfg = map[string]any{}
		if err := toml.Unmarshal(b, &cfg); err != nil {
			return fmt.Errorf("parse %s: %w", example, err)
		}
	}
	cfg["root"] = e.Root
	cfg["state"] = e.State
	cfg["grpc"] = merge(cfg["grpc"], map[string]any{"address": e.Address})
	cfg["ttrpc"] = merge(cfg["ttrpc"], map[string]any{"address": e.Address + ".ttrpc"})
	cfg["debug"] = merge(cfg["debug"], map[string]any{"address": "", "level": "debug"})
	cfg["metrics"] = merge(cfg["metrics"], map[string]any{"address": ""})

	dis, _ := cfg["disabled_plugins"].([]any)
	for _, p := range disabledPlugins {
		dis = append(dis, p)
	}
	cfg["disabled_plugins"] = dis

	// Every proxy plugin (snapshot, and diff if any) is served by our daemon.
	pp, _ := cfg["proxy_plugins"].(map[string]any)
	if _, ok := pp["overlayfuse"]; !ok {
		return fmt.Errorf("containerd config has no [proxy_plugins.overlayfuse]")
	}
	for name, v := range pp {
		m := merge(v, map[string]any{"address": e.DaemonAddress})
		if ex, ok := m["exports"].(map[string]any); ok && ex["root"] != nil {
			ex["root"] = e.DaemonRoot
		}
		pp[name] = m
	}

	plugins, _ := cfg["plugins"].(map[string]any)
	if plugins == nil {
		plugins = map[string]any{}
		cfg["plugins"] = plugins
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

	b, err := toml.Marshal(cfg)
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
