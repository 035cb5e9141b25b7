package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestConfigFileAndFlagPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(file, []byte(`
address = "/file.sock"
root = "/file-root"
log-level = "debug"
passthrough = "off"
consistency = "strict"
metrics-address = "127.0.0.1:9311"
containerd-address = "/file-containerd.sock"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	o, err := parseArgs([]string{"--config", file, "--root", "/flag-root", "--passthrough", "on", "--containerd-address", "/flag-containerd.sock"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := config{Address: "/file.sock", Root: "/flag-root", LogLevel: "debug", Passthrough: "on", Consistency: "strict", MetricsAddress: "127.0.0.1:9311", ContainerdAddress: "/flag-containerd.sock"}
	if o.config != want {
		t.Errorf("got %+v, want %+v", o.config, want)
	}

	o, err = parseArgs(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.config != defaultConfig() {
		t.Errorf("defaults: got %+v", o.config)
	}

	o, err = parseArgs([]string{"--config", file, "--metrics-address", ":9312"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.config.MetricsAddress != ":9312" {
		t.Errorf("--metrics-address: got %q", o.config.MetricsAddress)
	}
}
