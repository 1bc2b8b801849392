# Custody — the two commands a newcomer needs are `make run` and `make test`.
# Each installs what it needs (SoftHSMv2 via apt-get) when it is missing.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
BIN := bin

.PHONY: all deps build test vet race-test run proto bench bench-raw soak fuzz fmt clean

all: build

## deps: install SoftHSMv2 (and gcc) when missing
deps:
	@softhsm-test/install.sh

## build: compile custodyd and custodyctl into bin/
build: deps
	$(GO) build -o $(BIN)/ ./cmd/...

## test: go vet, then the whole suite under the race detector, against real SoftHSM tokens
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

## run: start custodyd on its embedded default (SoftHSM + bbolt + dev certificates)
run: build
	$(BIN)/custodyd --dev --dev-dir .custody-dev

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
	rm -rf $(BIN) .custody-dev
