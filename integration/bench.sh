#!/usr/bin/env bash
# Times import/unpack of the 20,000-file image and container start through
# overlayfuse against containerd's built-in overlayfs snapshotter, in one
# private containerd, and prints the ratios. BENCH_N sets the repetitions.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${OVERLAYFUSE_INTEGRATION_CACHE:-$here/.cache}
bin="$cache/bin"
die() { echo "bench.sh: $*" >&2; exit 1; }

"$here/setup.sh"
cd "$repo"
go build -o "$bin/containerd-overlay-grpc" ./cmd/containerd-overlay-grpc ||
	die "cannot build ./cmd/containerd-overlay-grpc"
go build -o "$cache/ofbench" ./integration/cmd/ofbench || die "cannot build ofbench"

config=${OVERLAYFUSE_CONTAINERD_CONFIG:-}
[ -n "$config" ] || [ ! -f "$repo/config.toml.example" ] || config="$repo/config.toml.example"
exec "$cache/ofbench" -bin "$bin" -daemon "$bin/containerd-overlay-grpc" \
	-config "$config" -image "$cache/images/large.tar" -n "${BENCH_N:-5}"
