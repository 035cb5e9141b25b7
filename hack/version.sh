#!/bin/sh
# Prints the version that `make build` and the tests stamp into the daemon
# (-ldflags "-X main.version=..."): `git describe` in a checkout of this
# repository, else the VERSION file of a source tarball, else "dev".
cd "$(dirname "$0")/.." || exit 1
if [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$(pwd -P)" ] &&
	git describe --always --dirty 2>/dev/null; then
	exit 0
fi
if [ -s VERSION ]; then
	head -n 1 VERSION
else
	echo dev
fi
