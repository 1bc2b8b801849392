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

# REST/JSON gateway and OpenAPI document (grpc-gateway v2). The HTTP rules
# live in api/custody/v1/gateway.yaml, not in the .proto files; only the
# methods it lists get a gateway handler and an OpenAPI path. Field names in
# JSON are the .proto names (internal/gateway marshals with UseProtoNames).
#
# The gateway handlers are generated standalone into their own package,
# api/custody/v1/gw (package custodyv1gw), so that importing the API (as the
# client package does) does not pull in the grpc-gateway runtime. protoc
# writes them into a scratch directory; only the package clause and its doc
# line are renamed on the way to gw/.
go build -o "$tmp/" \
  github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway \
  github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2
mkdir -p api/openapi "$tmp/gw" api/custody/v1/gw
protoc "${includes[@]}" \
  --plugin=protoc-gen-grpc-gateway="$tmp/protoc-gen-grpc-gateway" \
  --plugin=protoc-gen-openapiv2="$tmp/protoc-gen-openapiv2" \
  --grpc-gateway_out="$tmp/gw" \
  --grpc-gateway_opt=paths=source_relative,standalone=true,grpc_api_configuration=api/custody/v1/gateway.yaml \
  --openapiv2_out=api/openapi \
  --openapiv2_opt=grpc_api_configuration=api/custody/v1/gateway.yaml,allow_merge=true,merge_file_name=custody,json_names_for_fields=false,disable_service_tags=false \
  api/custody/v1/*.proto
rm -f api/custody/v1/*.pb.gw.go api/custody/v1/gw/*.pb.gw.go
for f in "$tmp"/gw/custody/v1/*.pb.gw.go; do
  sed -e 's/^package custodyv1$/package custodyv1gw/' \
      -e 's/^Package custodyv1 is a reverse proxy\.$/Package custodyv1gw is a reverse proxy./' \
      "$f" > "api/custody/v1/gw/$(basename "$f")"
done

gofmt -l api/custody/v1 | { ! grep . ; } || { echo "gen.sh: generated gateway code is not gofmt-clean" >&2; exit 1; }
