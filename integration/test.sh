#!/usr/bin/env bash
# make test-integration: installs and builds what is needed (setup.sh), then
# runs the integration tests (which build the daemon from this tree).
# OVERLAYFUSE_SNAPSHOTTER=overlayfs runs them on the kernel's overlayfs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$here/setup.sh"
cache=${OVERLAYFUSE_INTEGRATION_CACHE:-$here/.cache}
cd "$here"
export OVERLAYFUSE_INTEGRATION_BIN="$cache/bin"
exec go test -count=1 -timeout 20m -v "$@" . ./image/
