# overlayfuse — build, test, demo.
GO ?= go
BIN := bin

.PHONY: all build test test-unit test-integration demo bench vet clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

vet:
	$(GO) vet ./...

# All tests: unit and FUSE tests of every package, then integration.
test: vet test-unit test-integration

test-unit:
	$(GO) test -count=1 -timeout 20m ./overlayfuse/... ./snapshotter/... ./cmd/... ./internal/...

test-integration:
	@echo "integration: not yet wired"

demo:
	@echo "demo: not yet wired"

bench:
	@echo "bench: not yet wired"

clean:
	rm -rf $(BIN)
