#!/usr/bin/env bash
# make demo: installs and builds what is needed (setup.sh), builds our daemon,
# then runs a container on overlayfuse in a private containerd that prints its
# root mount, and cleans everything up (ofdemo tears down on exit, ^C or error).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${OVERLAYFUSE_INTEGRATION_CACHE:-$here/.cache}
bin="$cache/bin"
die() { echo "demo.sh: $*" >&2; exit 1; }

"$here/setup.sh"
cd "$repo"
go build -o "$bin/containerd-overlay-grpc" ./cmd/containerd-overlay-grpc ||
	die "cannot build ./cmd/containerd-overlay-grpc"
go build -o "$cache/ofdemo" ./integration/cmd/ofdemo || die "cannot build ofdemo"

config=${OVERLAYFUSE_CONTAINERD_CONFIG:-}
[ -n "$config" ] || [ ! -f "$repo/config.toml.example" ] || config="$repo/config.toml.example"
exec "$cache/ofdemo" -bin "$bin" -daemon "$bin/containerd-overlay-grpc" \
	-config "$config" -image "$cache/images/cases.tar"
