#!/usr/bin/env bash
# Installs and builds what the integration tests, the demo and the bench need,
# into integration/.cache (git-ignored). Idempotent; seconds when cached.
# The first run builds containerd and nerdctl from source: measured on a 2-core
# machine with an empty Go build cache, containerd takes about 4 minutes and
# nerdctl about 2 (less when Go's build cache already holds their packages).
# make demo, make test-integration and integration/bench.sh reuse what it leaves in
# .cache/bin: containerd, ctr, containerd-shim-runc-v2 and nerdctl.
#
#   apt: runc, busybox-static (the test image's base layer)
#   Go module proxy: containerd, ctr, containerd-shim-runc-v2 (v2.4.2), nerdctl (v2.2.0),
#     buildkitd and buildctl (v0.32.2; about 5 minutes the first time)
#   test images: .cache/images/{cases,large}.tar (OCI layout tars)
set -euo pipefail

CONTAINERD_VERSION=v2.4.2
NERDCTL_VERSION=v2.2.0
BUILDKIT_VERSION=v0.32.2
# The checksum database has no entry for this nerdctl version: pin its hash.
NERDCTL_SUM="h1:dTJO0gUak1FYg+PyG2+fc6L4Z3TIvH4T+Sa0vQFakAo="

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# OVERLAYFUSE_INTEGRATION_CACHE moves the cache out of the work tree (CI clones anew).
cache=${OVERLAYFUSE_INTEGRATION_CACHE:-$here/.cache}
bin="$cache/bin"
export GOWORK=off GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0

die() { echo "setup.sh: $*" >&2; exit 1; }
log() { echo "setup.sh: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, and the tests need root)"
command -v go >/dev/null || die "go not found in PATH"
mkdir -p "$bin" "$cache/images" "$cache/src"

# --- Debian packages -------------------------------------------------------
need=()
command -v runc >/dev/null || need+=(runc)
# The image's base layer must be a static busybox (package busybox is dynamic).
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then need+=(busybox-static); fi
if [ ${#need[@]} -gt 0 ]; then
	log "apt-get install ${need[*]}"
	apt-get update -qq || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		-o DPkg::Lock::Timeout=600 "${need[@]}" >/dev/null || die "apt-get install ${need[*]} failed"
fi

# moddir MODULE@VERSION prints the module's directory in the module cache.
moddir() {
	local dir
	dir=$(cd "$cache/src" && go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p') ||
		die "go mod download $1 failed (is the Go module proxy reachable?)"
	[ -d "$dir" ] || die "go mod download $1 gave no directory"
	echo "$dir"
}

# --- containerd, ctr, shim ---------------------------------------------------
stamp="$bin/.containerd-$CONTAINERD_VERSION"
if [ ! -e "$stamp" ] || [ ! -x "$bin/containerd" ] || [ ! -x "$bin/ctr" ] || [ ! -x "$bin/containerd-shim-runc-v2" ]; then
	log "building containerd $CONTAINERD_VERSION (first time: about 4 minutes on 2 cores)"
	src=$(moddir "github.com/containerd/containerd/v2@$CONTAINERD_VERSION")
	ld="-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
	(cd "$src" &&
		go build -trimpath -ldflags "$ld" -tags "urfave_cli_no_docs no_btrfs no_devmapper no_zfs" \
			-o "$bin/" ./cmd/containerd ./cmd/ctr &&
		go build -trimpath -ldflags "$ld" -tags "urfave_cli_no_docs no_grpc" \
			-o "$bin/" ./cmd/containerd-shim-runc-v2) || die "containerd build failed"
	touch "$stamp"
fi

# --- nerdctl -----------------------------------------------------------------
stamp="$bin/.nerdctl-$NERDCTL_VERSION"
if [ ! -e "$stamp" ] || [ ! -x "$bin/nerdctl" ]; then
	log "building nerdctl $NERDCTL_VERSION (first time: about 2 minutes on 2 cores)"
	sum=$(cd "$cache/src" && GONOSUMDB=github.com/containerd/nerdctl \
		go mod download -json "github.com/containerd/nerdctl/v2@$NERDCTL_VERSION" |
		sed -n 's/^\t"Sum": "\(.*\)",$/\1/p') || die "go mod download nerdctl $NERDCTL_VERSION failed"
	[ "$sum" = "$NERDCTL_SUM" ] || die "nerdctl $NERDCTL_VERSION: hash $sum, want $NERDCTL_SUM"
	src=$(GONOSUMDB=github.com/containerd/nerdctl moddir "github.com/containerd/nerdctl/v2@$NERDCTL_VERSION")
	# A writable copy: the module zip lacks ./mod/tigron (a nested module),
	# which only this test helper file imports; drop it.
	work="$cache/src/nerdctl-$NERDCTL_VERSION"
	rm -rf "$work"
	cp -r "$src" "$work"
	chmod -R u+w "$work"
	rm -f "$work/cmd/nerdctl/helpers/testing_linux.go"
	(cd "$work" &&
		go build -trimpath -ldflags "-X github.com/containerd/nerdctl/v2/pkg/version.Version=$NERDCTL_VERSION" \
			-o "$bin/" ./cmd/nerdctl) || die "nerdctl build failed"
	rm -rf "$work"
	touch "$stamp"
fi

# --- BuildKit ------------------------------------------------------------------
# A module of its own: buildkit's go.mod replaces and pins what `go build` of
# its packages from here would not resolve alone, and `go install pkg@version`
# refuses modules with replace directives.
stamp="$bin/.buildkit-$BUILDKIT_VERSION"
if [ ! -e "$stamp" ] || [ ! -x "$bin/buildkitd" ] || [ ! -x "$bin/buildctl" ]; then
	log "building buildkitd and buildctl $BUILDKIT_VERSION (first time: about 5 minutes on 2 cores)"
	work="$cache/src/buildkit-build"
	rm -rf "$work"
	mkdir -p "$work"
	(cd "$work" &&
		go mod init overlayfuse.invalid/buildkit-build >/dev/null 2>&1 &&
		go get "github.com/moby/buildkit/cmd/buildkitd@$BUILDKIT_VERSION" "github.com/moby/buildkit/cmd/buildctl@$BUILDKIT_VERSION" &&
		go build -trimpath -ldflags "-X github.com/moby/buildkit/version.Version=$BUILDKIT_VERSION" \
			-o "$bin/" github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl) ||
		die "buildkit build failed"
	rm -rf "$work"
	touch "$stamp"
fi

# --- test images ---------------------------------------------------------------
(cd "$repo" && go build -o "$cache/mkimage" ./integration/cmd/mkimage) || die "mkimage build failed"
# Deterministic and quick: always rewrite, so they follow the image code.
"$cache/mkimage" -kind cases -o "$cache/images/cases.tar" || die "mkimage cases failed"
"$cache/mkimage" -kind large -files 20000 -o "$cache/images/large.tar" || die "mkimage large failed"

log "ok: binaries in $bin, images in $cache/images, runc $(runc --version | sed -n 's/^runc version //p')"
