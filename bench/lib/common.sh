# shellcheck shell=bash
# Shared helpers for bench/run.sh: logging, timing, caches. Sourced, not run.

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# need CMD PACKAGE: fail early with the package to install.
need() {
	command -v "$1" >/dev/null 2>&1 || die "needs $1 (apt-get install -y $2)"
}

# drop_caches empties the page, dentry and inode caches so the next run
# reads from the disk, as after a reboot.
drop_caches() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
}

# median of the numbers on stdin, with 3 decimals.
median() {
	sort -g | awk '{ v[NR] = $1 } END {
		if (NR == 0) { print "n/a"; exit }
		m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
		printf "%.3f\n", m
	}'
}

# ratio A B prints A/B, or n/a when either is missing.
ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		if (a == "n/a" || b == "n/a" || b + 0 == 0) { print "n/a"; exit }
		printf "%.2fx\n", a / b
	}'
}
