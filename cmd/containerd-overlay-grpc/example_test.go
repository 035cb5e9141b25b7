package main

import (
	"context"
	"slices"
	"testing"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	containerdversion "github.com/containerd/containerd/v2/version"
)

// The example daemon config lists the defaults, under the flag names.
func TestDaemonConfigExample(t *testing.T) {
	var c config
	if err := loadConfigFile("config.toml.example", &c); err != nil {
		t.Fatal(err)
	}
	if c != defaultConfig() {
		t.Errorf("example %+v differs from the defaults %+v", c, defaultConfig())
	}
}

// The containerd example loads with containerd's own config loader and
// points containerd at this daemon's defaults.
func TestContainerdConfigExample(t *testing.T) {
	ctx := context.Background()
	var c srvconfig.Config
	if err := srvconfig.LoadConfig(ctx, "../../config.toml.example", &c); err != nil {
		t.Fatal(err)
	}
	// The version containerd writes today: an older one is migrated, with a
	// warning, on every start.
	if c.Version != containerdversion.ConfigVersion {
		t.Errorf("version %d, want containerd's current %d", c.Version, containerdversion.ConfigVersion)
	}
	p, ok := c.ProxyPlugins["overlayfuse"]
	if !ok || p.Type != "snapshot" || p.Address != defaultAddress || p.Exports["root"] != defaultRoot {
		t.Errorf("proxy_plugins.overlayfuse: %+v", p)
	}
	if !slices.Contains(p.Capabilities, "remap-ids") {
		t.Errorf("proxy_plugins.overlayfuse capabilities %v: no remap-ids", p.Capabilities)
	}
	if d := c.ProxyPlugins["overlayfuse-diff"]; d.Type != "diff" || d.Address != defaultAddress {
		t.Errorf("proxy_plugins.overlayfuse-diff: %+v", d)
	}
	var diffService struct {
		Order []string `toml:"default"`
	}
	if _, err := c.Decode(ctx, "io.containerd.service.v1.diff-service", &diffService); err != nil {
		t.Fatal(err)
	}
	if len(diffService.Order) < 2 || diffService.Order[0] != "overlayfuse-diff" || diffService.Order[len(diffService.Order)-1] != "walking" {
		t.Errorf("diff-service default %q: want overlayfuse-diff first, walking last", diffService.Order)
	}

	var transfer struct {
		Unpack []struct {
			Platform    string `toml:"platform"`
			Snapshotter string `toml:"snapshotter"`
			Differ      string `toml:"differ"`
		} `toml:"unpack_config"`
	}
	if _, err := c.Decode(ctx, "io.containerd.transfer.v1.local", &transfer); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, u := range transfer.Unpack {
		found = found || (u.Snapshotter == "overlayfuse" && u.Platform == "linux/amd64")
	}
	if !found {
		t.Errorf("no unpack_config entry for overlayfuse: %+v", transfer.Unpack)
	}

	var images struct {
		Snapshotter string `toml:"snapshotter"`
	}
	if _, err := c.Decode(ctx, "io.containerd.cri.v1.images", &images); err != nil {
		t.Fatal(err)
	}
	if images.Snapshotter != "overlayfuse" {
		t.Errorf("cri images snapshotter %q", images.Snapshotter)
	}
}
