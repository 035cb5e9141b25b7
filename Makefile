# overlayfuse — build, test, demo.
GO ?= go
BIN := bin
# Stamped into the daemon: its --version and its first log line say it.
VERSION := $(shell hack/version.sh)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build test test-unit test-integration stress-test demo bench vet clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

vet:
	$(GO) vet ./...

# All tests: unit and FUSE tests of every package, then integration.
test: vet test-unit test-integration

test-unit:
	$(GO) test -count=1 -timeout 20m ./overlayfuse/... ./snapshotter/... ./differ/... ./cmd/... ./internal/...

# The unit tests STRESS_COUNT times in a row (default 20) while caches are
# dropped every second and a process burns CPU (root; not part of `test`).
STRESS_COUNT ?= 20
stress-test:
	STRESS_COUNT=$(STRESS_COUNT) GO=$(GO) hack/stress.sh

# Installs runc, busybox-static (apt) and builds containerd/ctr/shim/nerdctl
# into integration/.cache once, then runs the integration tests as root.
test-integration:
	integration/test.sh

# Runs a container on overlayfuse in a private containerd, prints its root mount.
demo:
	integration/demo.sh

# Kernel overlayfs vs fuse-overlayfs vs overlayfuse (root; see bench/README.md).
# BENCH_QUICK=1 make bench for a short run; `make bench WORKLOADS="find-cold untar"`.
bench:
	bench/run.sh $(WORKLOADS)

clean:
	rm -rf $(BIN)
