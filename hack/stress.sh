#!/bin/sh
# Runs a command (by default the unit tests STRESS_COUNT times in a row)
# while one background loop drops the page, dentry and inode caches every
# second and another process burns CPU: tests must not depend on what the
# kernel happens to cache or on timing. Needs root (drop_caches).
#
#   hack/stress.sh                      # go test -count=$STRESS_COUNT (default 20) of the unit packages
#   hack/stress.sh go test -run X ./overlayfuse/
set -eu

count=${STRESS_COUNT:-20}
if [ $# -eq 0 ]; then
	set -- ${GO:-go} test -count="$count" -timeout "${STRESS_TIMEOUT:-120m}" \
		./overlayfuse/... ./snapshotter/... ./cmd/... ./internal/...
fi
if ! [ -w /proc/sys/vm/drop_caches ]; then
	echo "stress: needs root to write /proc/sys/vm/drop_caches" >&2
	exit 1
fi

pids=
stop() {
	for p in $pids; do
		kill "$p" 2>/dev/null || true
	done
	for p in $pids; do
		wait "$p" 2>/dev/null || true
	done
	pids=
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

(while :; do echo 3 >/proc/sys/vm/drop_caches; sleep 1; done) &
pids="$pids $!"
(while :; do :; done) &
pids="$pids $!"

echo "stress: $* (dropping caches every second, burning one CPU)" >&2
"$@"
