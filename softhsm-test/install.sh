#!/usr/bin/env bash
# Installs what Custody's build and tests need when it is missing:
# SoftHSMv2 (the PKCS#11 token used by tests and `make run`), NSS softokn
# and certutil (the second PKCS#11 implementation the hsm tests run on),
# OpenSC's pkcs11-tool (tests of officer keys on a token), the tools the
# documentation tests run (openssl, curl, jq, systemd-analyze), promtool (alert
# rule tests) and, with
# --proto, protoc (only `make proto` needs it).
# Safe to run repeatedly; prints nothing when everything is present.
set -euo pipefail

need=()
lib=""
for cand in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
  [ -f "$cand" ] && lib="$cand" && break
done
[ -n "$lib" ] && command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
# NSS softokn (libsoftokn3.so, in libnss3) and certutil (libnss3-tools): the
# hsm tests make a per-test NSS database token beside the SoftHSM one.
nss=""
for cand in /usr/lib/x86_64-linux-gnu/libsoftokn3.so /usr/lib/aarch64-linux-gnu/libsoftokn3.so /usr/lib64/libsoftokn3.so; do
  [ -f "$cand" ] && nss="$cand" && break
done
[ -n "$nss" ] || need+=(libnss3)
command -v certutil >/dev/null 2>&1 || need+=(libnss3-tools)
# pkcs11-tool: the officer-key-on-a-token tests make their key pair with it.
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
# The documentation tests run the docs' commands: openssl, curl, jq; and
# systemd-analyze checks the systemd unit.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v jq >/dev/null 2>&1 || need+=(jq)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# promtool (Debian's prometheus package): `make test` checks the alert rules
# and runs their unit tests.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ "${1:-}" = "--proto" ]; then
  command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
fi
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)

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
