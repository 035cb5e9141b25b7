#!/usr/bin/env bash
# Times import/unpack of the 20,000-file image, container start (also in
# a user namespace: idmapped, and the chowned copy made without remap-ids),
# nerdctl commit of a container that wrote 20,000 files, and nerdctl build (BuildKit,
# containerd worker) of a Go module on a Go toolchain image, cold and cached,
# through overlayfuse against containerd's built-in overlayfs snapshotter, in
# one private containerd, and prints the ratios. BENCH_N sets the
# repetitions; BENCH_BUILDS=0 leaves out commit and builds; BENCH_ONLY=REGEXP
# runs only the measures whose name matches (BENCH_ONLY=commit).
set -euo pipefail
builds=true
[ "${BENCH_BUILDS:-1}" = 0 ] && builds=false
exec "$(dirname "${BASH_SOURCE[0]}")/tool.sh" ofbench large -n "${BENCH_N:-5}" -builds="$builds" -only="${BENCH_ONLY:-}"
