# Custody — the two commands a newcomer needs are `make run` and `make test`.
# Each installs what it needs (SoftHSMv2 via apt-get) when it is missing.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
BIN := bin

.PHONY: all deps build test vet race-test rules run proto bench bench-raw soak fuzz fmt clean tools cluster

all: build

## deps: install SoftHSMv2 (and gcc) when missing
deps:
	@softhsm-test/install.sh

# The commit both binaries report with --version (the Go toolchain's own VCS
# stamp is missing in git worktrees and with -buildvcs=false).
COMMIT ?= $(shell git describe --always --dirty --abbrev=40 2>/dev/null)
LDFLAGS := -X github.com/custodyhq/custody/internal/version.Commit=$(COMMIT)

## build: compile custodyd and custodyctl into bin/
build: deps
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

## test: go vet, the alert rules, then the whole suite under the race detector, against real SoftHSM tokens
test: deps rules tools
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

## rules: check the Prometheus alert rules and run their unit tests (promtool)
rules: deps
	promtool check rules deploy/prometheus/custody-rules.yaml
	promtool test rules deploy/prometheus/*.test.yaml

## run: start custodyd on its embedded default (SoftHSM + bbolt + dev certificates)
run: build
	$(BIN)/custodyd --dev --dev-dir .custody-dev

## tools: the pinned etcd and helm the tests run, built from their own modules
## under tools/ (kept out of go.mod) into bin/ once, then reused
TOOLS := $(BIN)/etcd $(BIN)/helm
tools:
	@$(MAKE) --no-print-directory -j2 $(TOOLS)

$(BIN)/etcd: tools/etcd/go.mod tools/etcd/go.sum
	cd tools/etcd && $(GO) build -o ../../$(BIN)/etcd go.etcd.io/etcd/server/v3

$(BIN)/helm: tools/helm/go.mod tools/helm/go.sum
	cd tools/helm && $(GO) build -o ../../$(BIN)/helm helm.sh/helm/v3/cmd/helm

## cluster: 3 etcd members + 3 custodyd replicas on loopback (one SoftHSM token); Ctrl-C stops all
cluster: build $(BIN)/etcd
	$(BIN)/custody-cluster --dir .custody-cluster

## proto: regenerate the checked-in gRPC/protobuf code
proto:
	api/gen.sh

## bench: the benchmark matrix against a real custodyd (vault beside raw HSM); writes docs/benchmarks.md
bench: deps
	softhsm-test/bench.sh

## soak: a long mixed load against a real custodyd, judged on memory, goroutines, threads, files and errors (SOAK_DURATION=10m; not in CI); writes its section of docs/benchmarks.md
soak: deps
	softhsm-test/soak.sh

## bench-raw: raw HSM benchmarks (go test -bench), kept out of `make test`
bench-raw: deps
	$(GO) test -run '^$$' -bench . -benchtime 2s ./hsm/

## fuzz: run each fuzz target for a while (FUZZTIME=30s by default)
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN) .custody-dev .custody-cluster
