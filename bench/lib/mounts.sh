# shellcheck shell=bash
# Mounting the three overlays over the same layers. Sourced by run.sh;
# uses LOWERDIR, BENCH_DIR, OVERLAYFUSE_BIN, BENCH_OVERLAYFUSE_OPTS.

# The filesystems compared, kernel first: ratios are relative to it.
ALL_FS="kernel fuse-overlayfs overlayfuse"

fs_dir() { printf '%s/fs/%s' "$BENCH_DIR" "$1"; }
mnt_of() { printf '%s/mnt' "$(fs_dir "$1")"; }

# reset_upper gives FS an empty upper and work dir (while unmounted).
reset_upper() {
	local d
	d=$(fs_dir "$1")
	rm -rf "$d/upper" "$d/work"
	mkdir -p "$d/upper" "$d/work" "$d/mnt"
}

# mount_fs FS mounts a fresh overlay of LOWERDIR at FS's mountpoint and
# returns once it answers, or fails with the error in the log.
mount_fs() {
	local fs=$1 d opts
	d=$(fs_dir "$fs")
	opts="lowerdir=$LOWERDIR,upperdir=$d/upper,workdir=$d/work"
	case $fs in
	kernel) mount -t overlay overlay -o "$opts" "$d/mnt" ;;
	fuse-overlayfs) fuse-overlayfs -o "$opts" "$d/mnt" 2>&1 | { grep -v "unknown argument ignored: lazytime" || true; } >&2 ;;
	overlayfuse)
		[[ -x ${OVERLAYFUSE_BIN:-} ]] || { echo "overlayfuse binary not built" >&2; return 1; }
		"$OVERLAYFUSE_BIN" -o "$opts${BENCH_OVERLAYFUSE_OPTS:+,$BENCH_OVERLAYFUSE_OPTS}" "$d/mnt"
		;;
	*) echo "unknown filesystem $fs" >&2; return 1 ;;
	esac
	# fuse-overlayfs' output goes through grep, so check the mount itself.
	mountpoint -q "$d/mnt"
}

# umount_fs FS unmounts, lazily if something still holds the mount.
umount_fs() {
	local m
	m=$(mnt_of "$1")
	mountpoint -q "$m" || return 0
	umount "$m" 2>/dev/null || umount -l "$m"
}

# umount_all is the exit trap: nothing may stay mounted under BENCH_DIR.
umount_all() {
	local fs m
	for fs in $ALL_FS; do
		m=$(mnt_of "$fs")
		while mountpoint -q "$m" 2>/dev/null; do
			umount "$m" 2>/dev/null || umount -l "$m" || break
		done
	done
}
