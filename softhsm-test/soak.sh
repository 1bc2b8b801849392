#!/usr/bin/env bash
# make soak: a long mixed load against a real custodyd that judges its
# resource use (not part of `make test` or CI).
#
# It builds custodyd and custodyctl, makes a fresh dev vault (SoftHSM token,
# bbolt store, audit log, dev mTLS certificates) in a temp dir, and runs
# custodyd from a generated config: the dev identities, four AES keys, a
# signing and a MAC key granted to the dev relay with plaintext allowed and an
# RSA recipient key pinned, budgets on every key (high, plus one key whose
# budget the load outruns: the budgeted relay), and the REST gateway on. Then
# `custodyctl bench soak` cycles through every operation (both data-key
# formats, key transport, rewrap, batches, stored data keys, REST calls,
# budgeted calls) with 8 workers for SOAK_DURATION, samples custodyd every
# 10 s (RSS, threads, open files, goroutines, HSM counters, audit directory
# size, errors) and ends with a table and a verdict on the samples after the
# warm-up. The report replaces the
# generated soak section of docs/benchmarks.md.
#
# Exit status: 0 when the verdict is PASS, 1 otherwise (the report is written
# either way). Every process it starts is stopped on exit.
#
# Knobs (environment):
#   SOAK_DURATION=10m   length of the load
#   SOAK_WARMUP=0.4     fraction of it the verdict ignores (allocators settle first)
#   SOAK_OUT=docs/benchmarks.md   where the report goes; "-" prints it only
#   SOAK_LABEL=...      title of the report section
#   SOAK_CUSTODYD=PATH  run this custodyd binary instead of building this tree's
#                       (e.g. one built from an older commit, for a before/after
#                       comparison with the same load and verdict)
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${SOAK_DURATION:-10m}
OUT=${SOAK_OUT:-docs/benchmarks.md}
GO=${GO:-go}
export PATH="$PATH:/usr/local/go/bin"

softhsm-test/install.sh
command -v openssl >/dev/null 2>&1 || { echo "soak: needs openssl (apt-get install -y openssl)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/custody-soak.XXXXXX")
DEV="$WORK/dev"
BIN="$WORK/bin"
CUSTODYD_PID=""

stop_custodyd() {
  if [[ -n "$CUSTODYD_PID" ]] && kill -0 "$CUSTODYD_PID" 2>/dev/null; then
    kill -TERM "$CUSTODYD_PID" 2>/dev/null || true
    wait "$CUSTODYD_PID" 2>/dev/null || true
  fi
  CUSTODYD_PID=""
}
cleanup() {
  local rc=$?
  stop_custodyd
  if [[ $rc -ne 0 && -f "$WORK/custodyd.log" ]]; then
    echo "soak: exit $rc; last custodyd log lines:" >&2
    grep -v 'module recycled' "$WORK/custodyd.log" | tail -n 10 >&2 || true
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf 'soak: %s\n' "$*" >&2; }

mkdir -p "$BIN"
if [[ -n "${SOAK_CUSTODYD:-}" ]]; then
  cp "$SOAK_CUSTODYD" "$BIN/custodyd"
  UNDER_TEST="custodyd $SOAK_CUSTODYD"
  log "building custodyctl; custodyd is $SOAK_CUSTODYD"
  "$GO" build -o "$BIN/" ./cmd/custodyctl
else
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [[ -n "$(git status --porcelain 2>/dev/null)" ]]; then commit="$commit with uncommitted changes"; fi
  UNDER_TEST="custodyd built from this tree ($commit)"
  log "building custodyd and custodyctl into $BIN"
  "$GO" build -o "$BIN/" ./cmd/custodyd ./cmd/custodyctl
fi
LABEL=${SOAK_LABEL:-"Soak, $DURATION: $UNDER_TEST"}

lib=${CUSTODY_SOFTHSM_LIB:-}
if [[ -z "$lib" ]]; then
  for p in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
           /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    if [[ -f "$p" ]]; then lib=$p; break; fi
  done
fi
[[ -n "$lib" ]] || { log "SoftHSMv2 library not found"; exit 1; }

# wait_serving LOG: wait for "custodyd serving" and read the listeners' addresses.
wait_serving() {
  local logf=$1 line
  for _ in $(seq 1 1200); do
    if line=$(grep -m1 'msg="custodyd serving"' "$logf" 2>/dev/null); then
      GRPC_ADDR=$(sed -E 's/.* grpc=([^ ]+).*/\1/' <<<"$line")
      HTTP_ADDR=$(sed -E 's/.* http=([^ ]+).*/\1/' <<<"$line")
      GW_ADDR=$(sed -E 's/.* gateway=([^ ]*).*/\1/' <<<"$line")
      return 0
    fi
    if [[ -n "$CUSTODYD_PID" ]] && ! kill -0 "$CUSTODYD_PID" 2>/dev/null; then
      log "custodyd exited before serving"; return 1
    fi
    sleep 0.05
  done
  log "custodyd did not start within 60s"; return 1
}

# 1. A dev vault: token, PIN file, dev PKI, store, audit dir.
log "preparing a dev vault in $DEV"
"$BIN/custodyd" --dev --dev-dir "$DEV" --dev-listen 127.0.0.1:0 --dev-http 127.0.0.1:0 \
  >"$WORK/dev.out" 2>"$WORK/custodyd.log" &
CUSTODYD_PID=$!
wait_serving "$WORK/custodyd.log"
stop_custodyd
export SOFTHSM2_CONF="$DEV/softhsm2.conf"

# 2. The relay's key-transport key (RSA-3072), pinned by the SHA-256 of its SPKI.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$WORK/relay-rsa.pem" 2>/dev/null
openssl pkey -in "$WORK/relay-rsa.pem" -pubout -out "$WORK/relay-rsa.pub.pem"
PIN=$(openssl pkey -pubin -in "$WORK/relay-rsa.pub.pem" -outform DER | sha256sum | cut -d' ' -f1)

# 3. The config: dev identities, grants and budgets of the soak keys.
AES="[soak-aes-0, soak-aes-1, soak-aes-2, soak-aes-3]"
CFG="$WORK/custodyd.yaml"
cat >"$CFG" <<YAML
dev: true
listen: 127.0.0.1:0
http_listen: 127.0.0.1:0
gateway_listen: 127.0.0.1:0
tls:
  cert_file: $DEV/pki/server.pem
  key_file: $DEV/pki/server-key.pem
  client_ca_file: $DEV/pki/ca.pem
hsm:
  uri: "pkcs11:token=custody-dev?module-path=$lib"
  pin_file: $DEV/pin
store:
  path: $DEV/custody.db
audit:
  dir: $DEV/audit
keys:
  destroy_wait_min: 1s
governance:
  # The budgeted key is refused all the time on purpose: never freeze it.
  freeze: {refusals: 10000, within: 1s}
identities:
  - {name: dev-relay, role: relay, uri: "spiffe://custody.dev/relay"}
  - {name: dev-operator, role: operator, uri: "spiffe://custody.dev/operator"}
  - {name: dev-officer, role: officer, uri: "spiffe://custody.dev/officer"}
  - {name: dev-auditor, role: auditor, uri: "spiffe://custody.dev/auditor"}
grants:
  - identity: dev-relay
    keys: $AES
    operations: [encrypt, decrypt, datakey, unwrap, rewrap]
    allow_plaintext: true
    recipient_keys: [$PIN]
  - {identity: dev-relay, keys: [soak-p256-0], operations: [sign, verify, pubkey]}
  - {identity: dev-relay, keys: [soak-hmac-0], operations: [mac, verify-mac]}
  - {identity: dev-relay, keys: [soak-budget], operations: [encrypt]}
budgets:
  - {identity: dev-relay, key: soak-aes-0, rate: 1000000, burst: 1000000, volume: 1000000000, window: 24h}
  - {identity: dev-relay, key: soak-aes-1, rate: 1000000, burst: 1000000, volume: 1000000000, window: 24h}
  - {identity: dev-relay, key: soak-aes-2, rate: 1000000, burst: 1000000, volume: 1000000000, window: 24h}
  - {identity: dev-relay, key: soak-aes-3, rate: 1000000, burst: 1000000, volume: 1000000000, window: 24h}
  - {identity: dev-relay, key: soak-p256-0, rate: 1000000, burst: 1000000, volume: 1000000000, window: 24h}
  - {identity: dev-relay, key: soak-hmac-0, rate: 1000000, burst: 1000000, volume: 1000000000, window: 24h}
  # The budgeted relay: 5 encrypts a second on this key, far less than the mix asks.
  - {identity: dev-relay, key: soak-budget, rate: 5, burst: 10, volume: 1000000000, window: 24h}
YAML
chmod 600 "$CFG"

log "starting custodyd --config $CFG"
: >"$WORK/custodyd.log"
"$BIN/custodyd" --config "$CFG" 2>"$WORK/custodyd.log" >/dev/null &
CUSTODYD_PID=$!
wait_serving "$WORK/custodyd.log"
log "custodyd (pid $CUSTODYD_PID): gRPC $GRPC_ADDR, HTTP $HTTP_ADDR, gateway $GW_ADDR"

# 4. The load, the samples and the verdict.
set +e
"$BIN/custodyctl" --addr "$GRPC_ADDR" --ca "$DEV/pki/ca.pem" \
  --cert "$DEV/pki/relay.pem" --tls-key "$DEV/pki/relay-key.pem" --timeout 30s \
  bench soak --duration "$DURATION" --warmup "${SOAK_WARMUP:-0.4}" --keys 4 --pid "$CUSTODYD_PID" \
  --metrics-url "http://$HTTP_ADDR/metrics" --audit-dir "$DEV/audit" --gateway "$GW_ADDR" \
  --recipient-pub "$WORK/relay-rsa.pub.pem" --label "$LABEL" --report "$WORK/soak.md" \
  --setup-cert "$DEV/pki/operator.pem" --setup-key "$DEV/pki/operator-key.pem" >/dev/null
rc=$?
set -e
[[ -f "$WORK/soak.md" ]] || { log "no report was written (exit $rc)"; exit 1; }
recycles=$(grep -c 'module recycled' "$WORK/custodyd.log" || true)
stop_custodyd

# 5. The report.
{
  cat "$WORK/soak.md"
  cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) CPUs (${cpu_model:-unknown CPU}), $("$GO" version | cut -d' ' -f3),"
  echo "SoftHSM $(softhsm2-util --version 2>/dev/null || echo unknown); custodyd logged $recycles module recycles."
  echo "Reproduce: \`SOAK_DURATION=$DURATION make soak\`."
} >"$WORK/section.md"
if [[ "$OUT" == "-" ]]; then
  cat "$WORK/section.md"
else
  # Replace the generated part (between the soak markers) of $OUT's
  # "## Soak" section, keeping everything else; make bench keeps the
  # "## Soak" section (to the end of the file) in turn.
  begin='<!-- soak:begin (written by make soak) -->'
  end='<!-- soak:end -->'
  touch "$OUT"
  if grep -qF "$begin" "$OUT"; then
    awk -v b="$begin" -v e="$end" -v f="$WORK/section.md" '
      $0 == b { print; while ((getline l < f) > 0) print l; skip = 1; next }
      $0 == e { skip = 0 }
      !skip { print }' "$OUT" >"$WORK/out.md"
  else
    { cat "$OUT"; printf '\n## Soak\n\n%s\n' "$begin"; cat "$WORK/section.md"; printf '%s\n' "$end"; } >"$WORK/out.md"
  fi
  cp "$WORK/out.md" "$OUT"
  log "wrote the report into $OUT"
  cat "$WORK/section.md"
fi
exit $rc
