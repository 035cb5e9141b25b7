#!/usr/bin/env bash
# tool.sh NAME IMAGE [ARGS…]: installs and builds what is needed (setup.sh),
# builds our daemon and integration/cmd/NAME, and runs NAME on a private
# containerd with the test image IMAGE (cases or large) and ARGS.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${OVERLAYFUSE_INTEGRATION_CACHE:-$here/.cache}
bin="$cache/bin"
die() { echo "tool.sh: $*" >&2; exit 1; }

[ $# -ge 2 ] || die "usage: tool.sh NAME IMAGE [ARGS…]"
name=$1 image=$2
shift 2

"$here/setup.sh"
cd "$repo"
go build -ldflags "-X main.version=$(hack/version.sh)" -o "$bin/containerd-overlay-grpc" ./cmd/containerd-overlay-grpc ||
	die "cannot build ./cmd/containerd-overlay-grpc"
go build -o "$cache/$name" "./integration/cmd/$name" || die "cannot build $name"

config=${OVERLAYFUSE_CONTAINERD_CONFIG:-$repo/config.toml.example}
exec "$cache/$name" -bin "$bin" -daemon "$bin/containerd-overlay-grpc" \
	-config "$config" -image "$cache/images/$image.tar" "$@"
