#!/usr/bin/env bash
# Times import/unpack of the 20,000-file image and container start (also in
# a user namespace: idmapped, and the chowned copy made without remap-ids)
# through overlayfuse against containerd's built-in overlayfs snapshotter,
# in one private containerd, and prints the ratios. BENCH_N sets the
# repetitions.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/tool.sh" ofbench large -n "${BENCH_N:-5}"
