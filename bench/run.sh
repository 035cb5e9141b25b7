#!/usr/bin/env bash
# Runs the benchmark workloads on kernel overlayfs, fuse-overlayfs and
# overlayfuse over the same layers and prints seconds and ratios to the
# kernel. See bench/README.md. Needs root.
set -euo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
# shellcheck source=lib/common.sh
source "$HERE/lib/common.sh"
# shellcheck source=lib/mounts.sh
source "$HERE/lib/mounts.sh"
# shellcheck source=lib/workloads.sh
source "$HERE/lib/workloads.sh"

usage() {
	cat <<USAGE
usage: bench/run.sh [--list] [workload…]

Runs the given workloads (default: all) on each filesystem in BENCH_FS.
Environment:
  BENCH_QUICK=1          small sizes and one run, to check the scripts
  BENCH_RUNS=N           runs per workload and filesystem; the median counts (default 3)
  BENCH_FS="…"           subset of: $ALL_FS
  BENCH_BIG_MB=N         size of the big file (default 1024, quick 64)
  BENCH_TREE_FILES=N     files in the lower tree (default 50000, quick 5000)
  BENCH_UNTAR_FILES=N    files in the tarball (default 20000, quick 2000)
  BENCH_RAND_MB=N        MiB of 4k random I/O (default 256, quick 16)
  BENCH_CP_SRC=DIR       tree for cp-a (default \$(go env GOROOT)/src, quick: generated)
  BENCH_OVERLAYFUSE_OPTS extra -o options for overlayfuse (e.g. passthrough=off)
  BENCH_DIR=DIR          work directory (default: new dir under /var/tmp, removed at exit)
  BENCH_KEEP=1           keep BENCH_DIR
  BENCH_OUT=FILE         also write the results as tab-separated values
USAGE
}

selected=()
for a in "$@"; do
	case $a in
	-h | --help) usage; exit 0 ;;
	--list) workload_names; exit 0 ;;
	-*) die "unknown flag $a (see --help)" ;;
	*)
		workload_info "$a" >/dev/null || die "unknown workload $a (see --list)"
		selected+=("$a")
		;;
	esac
done
[[ ${#selected[@]} -gt 0 ]] || mapfile -t selected < <(workload_names)

[[ -n ${EPOCHREALTIME:-} ]] || die "needs bash 5 (EPOCHREALTIME)"
[[ $(id -u) -eq 0 ]] || die "needs root (mounts, drop_caches)"
need mount mount
need mountpoint util-linux
need fuse-overlayfs fuse-overlayfs
need fio fio
need go golang
need tar tar

if [[ ${BENCH_QUICK:-0} == 1 ]]; then
	: "${BENCH_RUNS:=1}" "${BENCH_BIG_MB:=64}" "${BENCH_TREE_FILES:=5000}"
	: "${BENCH_UNTAR_FILES:=2000}" "${BENCH_RAND_MB:=16}"
fi
RUNS=${BENCH_RUNS:-3}
BIG_MB=${BENCH_BIG_MB:-1024}
TREE_FILES=${BENCH_TREE_FILES:-50000}
UNTAR_FILES=${BENCH_UNTAR_FILES:-20000}
RAND_MB=${BENCH_RAND_MB:-256}
RANDW_MB=$((BIG_MB < 256 ? BIG_MB : 256))
FSLIST=${BENCH_FS:-$ALL_FS}
for n in "$RUNS" "$BIG_MB" "$TREE_FILES" "$UNTAR_FILES" "$RAND_MB"; do
	[[ $n =~ ^[1-9][0-9]*$ ]] || die "sizes and BENCH_RUNS must be positive integers, got '$n'"
done
for fs in $FSLIST; do
	[[ " $ALL_FS " == *" $fs "* ]] || die "unknown filesystem $fs in BENCH_FS (want: $ALL_FS)"
done

if [[ -n ${BENCH_DIR:-} ]]; then
	mkdir -p "$BENCH_DIR"
	BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
else
	BENCH_DIR=$(mktemp -d /var/tmp/overlayfuse-bench.XXXXXX)
fi
cleanup() {
	umount_all
	if [[ ${BENCH_KEEP:-0} == 1 ]]; then
		log "kept $BENCH_DIR"
	else
		rm -rf "$BENCH_DIR"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
LOG=$BENCH_DIR/bench.log
: >"$LOG"

case $(stat -f -c %T "$BENCH_DIR") in
tmpfs | overlayfs) log "warning: $BENCH_DIR is on $(stat -f -c %T "$BENCH_DIR"); cold runs mean little there" ;;
esac

# --- build -----------------------------------------------------------------
mkdir -p "$BENCH_DIR/bin"
(cd "$REPO" && go build -o "$BENCH_DIR/bin/gentree" ./bench/gentree) || die "cannot build bench/gentree"
OVERLAYFUSE_BIN=$BENCH_DIR/bin/overlayfuse
if ! (cd "$REPO" && go build -o "$OVERLAYFUSE_BIN" ./cmd/overlayfuse) >>"$LOG" 2>&1; then
	log "cannot build cmd/overlayfuse (see below); its column is n/a"
	tail -n 5 "$LOG" >&2
	OVERLAYFUSE_BIN=
fi

# --- layers ----------------------------------------------------------------
# base: the big tree. top: a tenth as many files in the same directory
# names (some shadow base files, most add to base directories) and the big
# file, so lookups and readdir really merge two layers.
log "preparing layers in $BENCH_DIR ($TREE_FILES files, ${BIG_MB} MiB file)"
L=$BENCH_DIR/layers
mkdir -p "$L/base/tree" "$L/top/tree" "$L/top/data"
"$BENCH_DIR/bin/gentree" -dir "$L/base/tree" -files "$TREE_FILES"
"$BENCH_DIR/bin/gentree" -dir "$L/top/tree" -files $((TREE_FILES / 10))
dd if=/dev/urandom of="$L/top/data/big" bs=1M count="$BIG_MB" status=none
LOWERDIR=$L/top:$L/base
STAT_LIST=$BENCH_DIR/stat.list
(cd "$L/base/tree" && find . -type f -print0) >"$STAT_LIST"
UNTAR_TAR=$BENCH_DIR/untar.tar
"$BENCH_DIR/bin/gentree" -tar "$UNTAR_TAR" -files "$UNTAR_FILES"
if [[ -n ${BENCH_CP_SRC:-} ]]; then
	CP_SRC=$BENCH_CP_SRC
elif [[ ${BENCH_QUICK:-0} == 1 ]]; then
	CP_SRC=$BENCH_DIR/cpsrc
	"$BENCH_DIR/bin/gentree" -dir "$CP_SRC" -files 2000
else
	CP_SRC=$(go env GOROOT)/src
fi
[[ -d $CP_SRC ]] || die "BENCH_CP_SRC $CP_SRC: not a directory"
sync

# --- measuring -------------------------------------------------------------
# in_subshell FN runs FN with set -e in a subshell; it must not run in an
# `if` or `||` context, where bash would ignore set -e inside it.
in_subshell() {
	local rc
	set +e
	(
		set -e
		"$1"
	) >>"$LOG" 2>&1
	rc=$?
	set -e
	return "$rc"
}

# measure FS WORKLOAD sets RESULT to the median seconds of RUNS runs, or
# n/a when the mount or the workload failed.
measure() {
	local fs=$1 wl=$2 fn cold i t0 t1 rc times=()
	fn=wl_${wl//-/_}
	read -r cold _ < <(workload_info "$wl")
	RESULT=n/a
	for ((i = 0; i < RUNS; i++)); do
		umount_fs "$fs"
		reset_upper "$fs"
		sync
		if ! mount_fs "$fs" >>"$LOG" 2>&1; then
			log "$fs: mount failed: $(tail -n 1 "$LOG")"
			return 0
		fi
		M=$(mnt_of "$fs")
		if declare -F "${fn}_prep" >/dev/null; then
			rc=0
			in_subshell "${fn}_prep" || rc=$?
			if [[ $rc -ne 0 ]]; then
				log "$fs: $wl: preparation failed: $(tail -n 1 "$LOG")"
				umount_fs "$fs"
				return 0
			fi
		fi
		if [[ $cold == cold ]]; then
			drop_caches
		fi
		t0=$EPOCHREALTIME
		rc=0
		in_subshell "$fn" || rc=$?
		t1=$EPOCHREALTIME
		umount_fs "$fs"
		if [[ $rc -ne 0 ]]; then
			log "$fs: $wl failed: $(tail -n 1 "$LOG")"
			return 0
		fi
		times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')")
	done
	RESULT=$(printf '%s\n' "${times[@]}" | median)
}

row_fmt='%-14s'
header=(workload)
for fs in $FSLIST; do
	if [[ $fs == kernel ]]; then
		row_fmt+=' %10s'
		header+=("kernel s")
	else
		row_fmt+=' %16s %7s'
		header+=("$fs s" ratio)
	fi
done
row_fmt+='\n'

log "runs per workload: $RUNS; filesystems: $FSLIST; kernel $(uname -r)"
log "$(fuse-overlayfs --version 2>/dev/null | grep -m1 "^fuse-overlayfs"); overlayfuse -o ${BENCH_OVERLAYFUSE_OPTS:-(defaults)}"
# shellcheck disable=SC2059 # the format is built above
printf "$row_fmt" "${header[@]}"
if [[ -n ${BENCH_OUT:-} ]]; then
	printf 'workload\tfs\tseconds\tratio_to_kernel\n' >"$BENCH_OUT"
fi
for wl in "${selected[@]}"; do
	row=("$wl")
	kernel=n/a
	for fs in $FSLIST; do
		measure "$fs" "$wl"
		if [[ $fs == kernel ]]; then
			kernel=$RESULT
			row+=("$RESULT")
			r=1.00x
		else
			r=$(ratio "$RESULT" "$kernel")
			row+=("$RESULT" "$r")
		fi
		if [[ -n ${BENCH_OUT:-} ]]; then
			printf '%s\t%s\t%s\t%s\n' "$wl" "$fs" "$RESULT" "$r" >>"$BENCH_OUT"
		fi
	done
	# shellcheck disable=SC2059
	printf "$row_fmt" "${row[@]}"
done
