# shellcheck shell=bash
# The workloads. Sourced by run.sh. Each workload NAME has a function
# wl_NAME (dashes as underscores) that is timed, and may have wl_NAME_prep,
# run untimed on the fresh mount before it. They run in a subshell with
# set -e, with M set to the mountpoint; the tree of small files is
# $M/tree, the big file $M/data/big.

# WORKLOADS lists "name cold|warm issue" in run order; cold ones run after
# drop_caches (every run also gets a fresh mount).
WORKLOADS=(
	"find-cold cold 2"
	"find-warm warm 2"
	"ls-lR-cold cold 2"
	"ls-lR-warm warm 2"
	"stat-cold cold 2"
	"stat-warm warm 2"
	"untar warm 2"
	"cp-a warm 2"
	"rm-rf warm 2"
	"read-cold cold 3"
	"read-warm warm 3"
	"write-fsync warm 3"
	"randread-4k warm 3"
	"randwrite-4k warm 3"
	"copyup warm 3"
)

# Issue 2: metadata over the lower tree.
wl_find_cold() { find "$M/tree" >/dev/null; }
wl_find_warm_prep() { wl_find_cold; }
wl_find_warm() { wl_find_cold; }

wl_ls_lR_cold() { ls -lR "$M/tree" >/dev/null; }
wl_ls_lR_warm_prep() { wl_ls_lR_cold; }
wl_ls_lR_warm() { wl_ls_lR_cold; }

# stat(2) of every file by name, from a list made on the lower layer, so
# no readdir is timed: lookups and getattr only.
wl_stat_cold() { cd "$M/tree" && xargs -0 stat --printf= <"$STAT_LIST"; }
wl_stat_warm_prep() { wl_stat_cold; }
wl_stat_warm() { wl_stat_cold; }

# Creating many small files: create, write, setattr (times, mode) each.
wl_untar_prep() { mkdir "$M/untar"; }
wl_untar() { tar -xf "$UNTAR_TAR" -C "$M/untar"; }

wl_cp_a() { cp -a "$CP_SRC" "$M/cp"; }

# Deleting a lower tree writes a whiteout per entry.
wl_rm_rf() { rm -rf "$M/tree"; }

# Issue 3: data. The dd block size is large so the syscalls do not count.
wl_read_cold() { dd if="$M/data/big" of=/dev/null bs=1M status=none; }
wl_read_warm_prep() { wl_read_cold; }
wl_read_warm() { wl_read_cold; }

wl_write_fsync() { dd if=/dev/zero of="$M/newbig" bs=1M count="$BIG_MB" conv=fsync status=none; }

# 4k random I/O through the page cache: the per-request cost of the
# overlay. invalidate=0 keeps fio from dropping the cache we warmed.
fio_rand() {
	fio --name=rand --filename="$1" --rw="$2" --bs=4k --size="$3"M --io_size="$RAND_MB"M \
		--ioengine=psync --invalidate=0 --norandommap --randrepeat=1 --fallocate=none \
		${4:+"$4"} --output=/dev/null
}
wl_randread_4k_prep() { wl_read_cold; }
wl_randread_4k() { fio_rand "$M/data/big" randread "$BIG_MB" --readonly; }

# The file is made through the mount (so it is in the upper layer) but not
# timed. Before every write the kernel may ask for security.capability.
wl_randwrite_4k_prep() {
	dd if=/dev/zero of="$M/rand" bs=1M count="$RANDW_MB" status=none
	sync
}
wl_randwrite_4k() { fio_rand "$M/rand" randwrite "$RANDW_MB"; }

# Copy-up of the whole big file: open O_RDWR and write one byte, as a
# program touching a file of an image does.
wl_copyup() {
	exec 3<>"$M/data/big"
	printf x >&3
	exec 3>&-
}

# workload_names prints the workload names, one a line.
workload_names() {
	local w
	for w in "${WORKLOADS[@]}"; do
		printf '%s\n' "${w%% *}"
	done
}

# workload_info NAME prints "cold|warm issue", or fails for an unknown name.
workload_info() {
	local w
	for w in "${WORKLOADS[@]}"; do
		if [[ ${w%% *} == "$1" ]]; then
			printf '%s\n' "${w#* }"
			return 0
		fi
	done
	return 1
}
