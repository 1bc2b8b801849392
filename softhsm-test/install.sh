#!/usr/bin/env bash
# Installs what Custody's build and tests need when it is missing:
# SoftHSMv2 (the PKCS#11 token used by tests and `make run`), OpenSC's
# pkcs11-tool (tests of officer keys on a token), promtool (alert rule
# tests) and, with
# --proto, protoc (only `make proto` needs it).
# Safe to run repeatedly; prints nothing when everything is present.
set -euo pipefail

need=()
lib=""
for cand in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
  [ -f "$cand" ] && lib="$cand" && break
done
[ -n "$lib" ] && command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
# pkcs11-tool: the officer-key-on-a-token tests make their key pair with it.
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
if [ "${1:-}" = "--proto" ]; then
  command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
fi
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
# promtool: make test unit-tests the Prometheus alert rules with it.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
