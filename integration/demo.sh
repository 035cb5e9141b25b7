#!/usr/bin/env bash
# make demo: installs and builds what is needed, then runs a container on
# overlayfuse in a private containerd that prints its root mount, and
# cleans everything up (ofdemo tears down on exit, ^C or error).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/tool.sh" ofdemo cases
