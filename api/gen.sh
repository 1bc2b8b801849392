#!/usr/bin/env bash
# Regenerates the Go code for Custody's gRPC API from api/custody/v1/*.proto.
# The plugins are the versions pinned by go.mod's tool directives, so output
# is reproducible; the generated files are checked in. Run from anywhere:
#   api/gen.sh        (or: make proto)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# protoc itself (Debian's protobuf-compiler, which ships the well-known types).
softhsm-test/install.sh --proto

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Build the plugins at the versions go.mod pins.
go build -o "$tmp/" \
  google.golang.org/protobuf/cmd/protoc-gen-go \
  google.golang.org/grpc/cmd/protoc-gen-go-grpc

# Include path for google/protobuf/*.proto: protoc finds its own on Debian;
# add /usr/include explicitly when present for other layouts.
includes=(-I api)
[ -f /usr/include/google/protobuf/timestamp.proto ] && includes+=(-I /usr/include)

protoc "${includes[@]}" \
  --plugin=protoc-gen-go="$tmp/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$tmp/protoc-gen-go-grpc" \
  --go_out=api --go_opt=paths=source_relative \
  --go-grpc_out=api --go-grpc_opt=paths=source_relative \
  api/custody/v1/*.proto

gofmt -l api/custody/v1 | { ! grep . ; } || { echo "gen.sh: generated code is not gofmt-clean" >&2; exit 1; }
