#!/usr/bin/env bash
# make bench: run the standard benchmark matrix against a real custodyd and
# write docs/benchmarks.md.
#
# It builds custodyd, custodyctl, custody-hsmbench and custody-echo, makes a
# fresh dev vault (SoftHSM token + bbolt + dev mTLS certificates) in a temp
# dir, runs custodyd from a generated config that mirrors the dev config and
# also grants the bench keys to the dev relay, creates the keys, and runs
# every cell beside, in the same run, the raw PKCS#11 rate of the same
# operation on the same token (custody-hsmbench) and, for the decrypt cells,
# the same workload against custody-echo (bare gRPC over the same mutual
# TLS): decrypt at concurrency 1, 8 and 64, batch decrypt (100 items per
# call), decrypt through the Go client's coalescing, and the other
# operations at 1 and 8. It records custodyd's and the client's CPU and the
# load average per cell, measures custodyd's resident memory under load and
# its start-up-to-ready time with many keys, takes CPU profiles of the
# decrypt and batch cells and breaks them down, measures the audit disk's
# flush latency (fsync vs fdatasync, growing vs preallocated file), and
# writes the report.
#
# Idempotent: every run starts from an empty temp dir and rewrites the report
# above its "Soak" or "Notes" section (kept as written); every process it
# starts is stopped on exit (trap).
#
# Knobs (environment):
#   BENCH_DURATION=3s       measured time per cell (the raw baseline and the
#                           echo run as long again each)
#   BENCH_MANY_KEYS=5000    master keys for the large-key-count decrypt cells
#   BENCH_OUT=docs/benchmarks.md
#   BENCH_CONFIG_EXTRA=FILE YAML appended to the generated custodyd config
#                           (the generated config already sets high budgets)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${BENCH_DURATION:-3s}
MANY=${BENCH_MANY_KEYS:-5000}
FEW=10
OUT=${BENCH_OUT:-docs/benchmarks.md}
GO=${GO:-go}
export PATH="$PATH:/usr/local/go/bin"

softhsm-test/install.sh

WORK=$(mktemp -d "${TMPDIR:-/tmp}/custody-bench.XXXXXX")
DEV="$WORK/dev"
BIN="$WORK/bin"
RESULTS="$WORK/results.jsonl"
CUSTODYD_PID=""
SAMPLER_PID=""
ECHO_PID=""

stop_custodyd() {
  if [[ -n "$CUSTODYD_PID" ]] && kill -0 "$CUSTODYD_PID" 2>/dev/null; then
    kill -TERM "$CUSTODYD_PID" 2>/dev/null || true
    wait "$CUSTODYD_PID" 2>/dev/null || true
  fi
  CUSTODYD_PID=""
}
cleanup() {
  local rc=$?
  if [[ -n "$SAMPLER_PID" ]]; then kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; fi
  if [[ -n "$ECHO_PID" ]]; then kill -TERM "$ECHO_PID" 2>/dev/null || true; wait "$ECHO_PID" 2>/dev/null || true; fi
  stop_custodyd
  if [[ $rc -ne 0 && -f "$WORK/custodyd.log" ]]; then
    echo "bench: failed (exit $rc); last custodyd log lines:" >&2
    tail -n 20 "$WORK/custodyd.log" >&2 || true
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf 'bench: %s\n' "$*" >&2; }

log "building into $BIN"
"$GO" build -o "$BIN/" ./cmd/custodyd ./cmd/custodyctl ./cmd/custody-hsmbench ./cmd/custody-cluster ./cmd/custody-echo

lib=${CUSTODY_SOFTHSM_LIB:-}
if [[ -z "$lib" ]]; then
  for p in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
           /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    if [[ -f "$p" ]]; then lib=$p; break; fi
  done
fi
[[ -n "$lib" ]] || { log "SoftHSMv2 library not found"; exit 1; }

# wait_serving LOG: wait for custodyd's "custodyd serving" line and set
# GRPC_ADDR and HTTP_ADDR from it (the listeners are on port 0: free ports).
wait_serving() {
  local logf=$1 line
  for _ in $(seq 1 1200); do
    if line=$(grep -m1 'msg="custodyd serving"' "$logf" 2>/dev/null); then
      GRPC_ADDR=$(sed -E 's/.* grpc=([^ ]+).*/\1/' <<<"$line")
      HTTP_ADDR=$(sed -E 's/.* http=([^ ]+).*/\1/' <<<"$line")
      return 0
    fi
    if [[ -n "$CUSTODYD_PID" ]] && ! kill -0 "$CUSTODYD_PID" 2>/dev/null; then
      log "custodyd exited before serving"; return 1
    fi
    sleep 0.05
  done
  log "custodyd did not start within 60s"; return 1
}

# http_status HOSTPORT PATH: the HTTP status code of a GET, without curl.
http_status() {
  local host=${1%:*} port=${1##*:} code
  exec 3<>"/dev/tcp/$host/$port" 2>/dev/null || { echo 000; return 0; }
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$1" >&3
  read -r _ code _ <&3 || code=000
  exec 3<&- 3>&-
  echo "${code:-000}"
}

wait_ready() {
  for _ in $(seq 1 1200); do
    [[ $(http_status "$HTTP_ADDR" /readyz) == 200 ]] && return 0
    sleep 0.01
  done
  log "custodyd not ready after 12s"; return 1
}

# 1. A dev vault: token, PIN file, dev PKI, store, audit dir, demo key.
log "preparing a dev vault in $DEV"
"$BIN/custodyd" --dev --dev-dir "$DEV" --dev-listen 127.0.0.1:0 --dev-http 127.0.0.1:0 \
  >"$WORK/dev.out" 2>"$WORK/custodyd.log" &
CUSTODYD_PID=$!
wait_serving "$WORK/custodyd.log"
stop_custodyd
export SOFTHSM2_CONF="$DEV/softhsm2.conf"
HSM_URI="pkcs11:token=custody-dev?module-path=$lib"

# 2. A config mirroring the dev one, plus explicit grants of the bench keys.
names() { # PREFIX N -> YAML flow list of PREFIX0..PREFIX(N-1)
  local i out=""
  for ((i = 0; i < $2; i++)); do out+="${out:+, }$1$i"; done
  printf '[%s]' "$out"
}
CFG="$WORK/custodyd.yaml"
{
  cat <<YAML
dev: true
listen: 127.0.0.1:0
http_listen: 127.0.0.1:0
tls:
  cert_file: $DEV/pki/server.pem
  key_file: $DEV/pki/server-key.pem
  client_ca_file: $DEV/pki/ca.pem
hsm:
  uri: "$HSM_URI"
  pin_file: $DEV/pin
store:
  path: $DEV/custody.db
audit:
  dir: $DEV/audit
keys:
  destroy_wait_min: 1s
identities:
  - {name: dev-relay, role: relay, uri: "spiffe://custody.dev/relay"}
  - {name: dev-operator, role: operator, uri: "spiffe://custody.dev/operator"}
  - {name: dev-officer, role: officer, uri: "spiffe://custody.dev/officer"}
  - {name: dev-auditor, role: auditor, uri: "spiffe://custody.dev/auditor"}
grants:
  - identity: dev-relay
    keys: [demo]
    operations: [encrypt, decrypt, datakey, unwrap, rewrap]
    allow_plaintext: true
  - identity: dev-relay
    keys: $(names bench-aes- "$MANY")
    operations: [encrypt, decrypt, datakey, unwrap]
    allow_plaintext: true
  - identity: dev-relay
    keys: $(names bench-p256- "$FEW")
    operations: [sign]
  - identity: dev-relay
    keys: $(names bench-hmac- "$FEW")
    operations: [mac]
budgets:
YAML
  # Budgets on, set high for the bench relay: every request pays the
  # budget check, none is refused.
  budget() { # PREFIX N
    local i
    for ((i = 0; i < $2; i++)); do
      echo "  - {identity: dev-relay, key: $1$i, rate: 1000000, burst: 1000000, volume: 1000000000, window: 24h}"
    done
  }
  echo "  - {identity: dev-relay, key: demo, rate: 1000000, burst: 1000000, volume: 1000000000, window: 24h}"
  budget bench-aes- "$MANY"
  budget bench-p256- "$FEW"
  budget bench-hmac- "$FEW"
  if [[ -n "${BENCH_CONFIG_EXTRA:-}" ]]; then cat "$BENCH_CONFIG_EXTRA"; fi
} >"$CFG"
chmod 600 "$CFG"

start_custodyd() {
  : >"$WORK/custodyd.log"
  "$BIN/custodyd" --config "$CFG" --pprof 2>"$WORK/custodyd.log" >/dev/null &
  CUSTODYD_PID=$!
  wait_serving "$WORK/custodyd.log" || return 1
  wait_ready
}

log "starting custodyd --config $CFG --pprof"
start_custodyd
log "custodyd (pid $CUSTODYD_PID) serving gRPC on $GRPC_ADDR, HTTP on $HTTP_ADDR"

ctl() {
  "$BIN/custodyctl" --addr "$GRPC_ADDR" --ca "$DEV/pki/ca.pem" \
    --cert "$DEV/pki/relay.pem" --tls-key "$DEV/pki/relay-key.pem" --timeout 30s "$@"
}

# custody-echo: bare gRPC with custodyd's server certificate and client CA.
"$BIN/custody-echo" --cert "$DEV/pki/server.pem" --key "$DEV/pki/server-key.pem" --client-ca "$DEV/pki/ca.pem" \
  >"$WORK/echo.out" 2>"$WORK/echo.err" &
ECHO_PID=$!
ECHO_ADDR=""
for _ in $(seq 1 600); do
  if ECHO_ADDR=$(sed -n 's/^custody-echo serving on //p' "$WORK/echo.out" 2>/dev/null) && [[ -n "$ECHO_ADDR" ]]; then break; fi
  kill -0 "$ECHO_PID" 2>/dev/null || { log "custody-echo exited: $(cat "$WORK/echo.err")"; exit 1; }
  sleep 0.05
done
[[ -n "$ECHO_ADDR" ]] || { log "custody-echo did not start"; exit 1; }
log "custody-echo (pid $ECHO_PID) on $ECHO_ADDR"
ECHO=(--echo-addr "$ECHO_ADDR")
SETUP=(--setup --setup-cert "$DEV/pki/operator.pem" --setup-key "$DEV/pki/operator-key.pem")
BASE=(--baseline --hsm-uri "$HSM_URI" --hsm-pin-file "$DEV/pin")

# 3. Keys: the many AES master keys (timed), and the few of each class.
log "creating $MANY AES master keys (and $FEW P-256 and $FEW HMAC keys)"
ctl bench --op decrypt --keys "$MANY" --count 1 -q -o json "${SETUP[@]}" >"$WORK/setup.json"
KEYS_SECONDS=$(sed -E 's/.*"setup_seconds":([0-9.]+).*/\1/' "$WORK/setup.json" | awk '{printf "%.1f", $1}')
KEYS_CREATED=$(sed -E 's/.*"keys_created":([0-9]+).*/\1/' "$WORK/setup.json")
ctl bench --op sign --keys "$FEW" --count 1 -q -o json "${SETUP[@]}" >/dev/null
ctl bench --op mac --keys "$FEW" --count 1 -q -o json "${SETUP[@]}" >/dev/null
log "created $KEYS_CREATED keys in ${KEYS_SECONDS}s"

# 4. The matrix. Every cell: the vault, then the raw HSM, then (decrypt
# cells) custody-echo, back to back, so that their ratios see the same load.
cell() { # OP CONCURRENCY KEYS [extra flags]
  local op=$1 c=$2 k=$3
  shift 3
  log "cell: $op concurrency $c keys $k ($DURATION + baseline$([[ " $* " == *" --echo-addr "* ]] && echo " + echo")); load $(cut -d' ' -f1 /proc/loadavg)"
  ctl bench --op "$op" -c "$c" --keys "$k" --duration "$DURATION" -q -o json --server-pid "$CUSTODYD_PID" "${BASE[@]}" "$@" >>"$RESULTS"
}
: >"$RESULTS"
for c in 1 8 64; do cell decrypt "$c" "$FEW" "${ECHO[@]}"; done
for c in 8 64; do cell decrypt-coalesced "$c" "$FEW" "${ECHO[@]}"; done
for c in 1 8; do cell batch-decrypt "$c" "$FEW" --batch 100 "${ECHO[@]}"; done
for c in 1 8; do cell encrypt "$c" "$FEW" "${ECHO[@]}"; done
# Decrypt with the many keys, memory sampled under load (VmRSS every 0.2s).
sample_rss() {
  local max=0 v
  while kill -0 "$CUSTODYD_PID" 2>/dev/null; do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$CUSTODYD_PID/status" 2>/dev/null || echo 0)
    ((v > max)) && max=$v && echo "$max" >"$WORK/rss_kb"
    sleep 0.2
  done
}
cell decrypt 1 "$MANY"
sample_rss &
SAMPLER_PID=$!
cell decrypt 8 "$MANY"
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
RSS_KB=$(cat "$WORK/rss_kb" 2>/dev/null || echo 0)
HWM_KB=$(awk '/^VmHWM:/ {print $2}' "/proc/$CUSTODYD_PID/status")
for op in datakey unwrap datakey-kwp unwrap-kwp sign mac; do for c in 1 8; do cell "$op" "$c" "$FEW"; done; done
# CPU profiles of the headline cells, each with its own result line (kept
# out of the table) for the per-operation breakdown.
profile() { # NAME OP CONCURRENCY [extra flags]
  local name=$1 op=$2 c=$3
  shift 3
  log "profiling $op at concurrency $c"
  ctl bench --op "$op" -c "$c" --keys "$FEW" --duration "$DURATION" -q -o json --server-pid "$CUSTODYD_PID" \
    --cpuprofile "$WORK/cpu-$name.pprof" --pprof-addr "$HTTP_ADDR" "$@" >"$WORK/profile-$name.json"
}
profile decrypt8 decrypt 8
profile decrypt64 decrypt 64
profile batch8 batch-decrypt 8 --batch 100

# The audit disk: one 300-byte record's write + flush, five ways, on the
# file system of the vault's audit directory.
log "measuring flush latency on the audit disk"
FLUSH=$(TMPDIR="$DEV" "$GO" test -run '^$' -bench '^BenchmarkFlush$' -benchtime 2000x ./internal/audit/ 2>&1 | grep '^BenchmarkFlush' || true)

# 5. Start-up to ready with the many keys in the store.
log "restarting custodyd to time start-up with $((MANY + 2 * FEW + 1)) keys"
stop_custodyd
t0=$(date +%s%N)
STARTUP_NOTE=""
if start_custodyd; then
  t1=$(date +%s%N)
  STARTUP=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", (b - a) / 1e9}')
else
  # Keep the report: a start-up that fails is the finding.
  t1=$(date +%s%N)
  STARTUP=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", (b - a) / 1e9}')
  STARTUP_NOTE="custodyd did NOT become ready with $((MANY + 2 * FEW + 1)) keys: it gave up after ${STARTUP} s: $(grep -m1 '^custodyd:' "$WORK/custodyd.log" || tail -n1 "$WORK/custodyd.log")"
  log "$STARTUP_NOTE"
fi
stop_custodyd

# 5b. 1 replica vs 3 replicas (softhsm-test/bench-replicas.sh).
log "1 replica vs 3 replicas"
softhsm-test/bench-replicas.sh "$BIN" "$DURATION" "$WORK/replicas.md"

# 6. The report.
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git status --porcelain 2>/dev/null)" ]]; then commit="$commit (with uncommitted changes)"; fi
softhsm=$(softhsm2-util --version 2>/dev/null || echo unknown)
top_profile() { # FILE: the top of a CPU profile, cumulative, as a code block
  "$GO" tool pprof -top -cum -nodecount=30 "$BIN/custodyd" "$1" 2>/dev/null |
    grep -Ev '^(File|Build ID|Type|Time):' || echo "(no profile)"
}
# focus_seconds FILE REGEX: CPU seconds in stacks through functions matching REGEX.
focus_seconds() {
  "$GO" tool pprof -top -nodefraction=0 -edgefraction=0 -nodecount=1000000 -focus="$2" "$BIN/custodyd" "$1" 2>/dev/null |
    awk '/^Showing nodes accounting for/ {v=$5; sub(/,$/, "", v); u=v; gsub(/[0-9.]/, "", u); gsub(/[a-zµ]+$/, "", v);
      f = (u=="ms") ? 0.001 : (u=="us"||u=="µs") ? 0.000001 : (u=="min") ? 60 : (u=="h") ? 3600 : 1; printf "%.3f", v*f; found=1}
      END {if (!found) printf "0"}'
}
total_seconds() { # FILE
  "$GO" tool pprof -top -nodecount=1 "$BIN/custodyd" "$1" 2>/dev/null |
    awk '/Total samples =/ {v=$(NF-1); u=v; gsub(/[0-9.]/, "", u); gsub(/[a-zµ]+$/, "", v); f=(u=="ms")?0.001:1; printf "%.3f", v*f}'
}
# breakdown NAME: where custodyd's CPU went in a profiled cell, per category
# (stacks through the named code; categories overlap where one calls another).
breakdown() {
  local name=$1 prof="$WORK/cpu-$1.pprof" res="$WORK/profile-$1.json" total ops
  [[ -s "$prof" ]] || { echo "(no profile)"; return; }
  total=$(total_seconds "$prof")
  ops=$(sed -E 's/.*"ops":([0-9]+).*/\1/' "$res")
  echo "$(sed -E 's/.*"ops_per_sec":([0-9.]+).*/\1/' "$res" | awk '{printf "%.0f", $1}') ops/s, custodyd CPU $total s over the run, $(awk -v t="$total" -v n="$ops" 'BEGIN {printf "%.0f", 1e6*t/n}') µs per operation."
  echo
  echo "| where (stacks through) | CPU s | share | µs per op |"
  echo "|---|---:|---:|---:|"
  local row label re s
  while IFS='|' read -r label re; do
    s=$(focus_seconds "$prof" "$re")
    awk -v l="$label" -v s="$s" -v t="$total" -v n="$ops" 'BEGIN {printf "| %s | %.2f | %.0f%% | %.1f |\n", l, s, (t>0)?100*s/t:0, (n>0)?1e6*s/n:0}'
  done <<'CATS'
HSM operations (package hsm, PKCS#11 through cgo)|custody/hsm\.
… of which C_DecryptInit|pkcs11\.\(\*Ctx\)\.DecryptInit
audit write path (writer + syncer goroutines)|internal/audit\.\(\*Log\)\.(runWriter|runSyncer)
… of which the flush (fdatasync)|syscall\.Fdatasync
… of which chaining and encoding records|internal/audit\.\(\*Log\)\.write$
request's wait for its record (Append)|internal/audit\.\(\*Log\)\.(Append|AppendBatch)$
authorisation, budget, key lookup (Server.access)|internal/server\.\(\*Server\)\.access$
context digest (keyed HMAC)|ContextDigester
TLS records (crypto/tls)|crypto/tls\.
gRPC transport and HTTP/2 framing|grpc/internal/transport\.|x/net/http2\.
protobuf encoding|google\.golang\.org/protobuf/
socket reads and writes|internal/poll\.\(\*FD\)\.(Read|Write)$
memory allocation (mallocgc)|runtime\.mallocgc$
garbage collection (background and assists)|runtime\.gcBgMarkWorker|runtime\.gcAssistAlloc
goroutine scheduling|runtime\.schedule$|runtime\.findRunnable$
CATS
}
flush_table() {
  if [[ -z "$FLUSH" ]]; then echo "(flush benchmark did not run)"; return; fi
  echo "| file, flush | p50 µs | mean µs |"
  echo "|---|---:|---:|"
  for m in append-fsync append-fdatasync prealloc-fsync prealloc-fdatasync zeroed-fdatasync; do
    awk -v m="$m" '{for (i=1; i<NF; i++) {if ($(i+1)==m"-p50-µs") p=$i; if ($(i+1)==m"-mean-µs") a=$i}}
      END {printf "| %s | %.0f | %.0f |\n", m, p, a}' <<<"$FLUSH"
  done
}
tmp_out="$WORK/benchmarks.md"
{
  cat <<MD
# Custody benchmarks

Written by \`make bench\` (softhsm-test/bench.sh); do not edit above "Soak" or "Notes"
by hand — rerun it.

- date: $(date -u '+%Y-%m-%d %H:%M UTC')
- commit: $commit
- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}; $(awk '/^MemTotal/ {printf "%.1f GiB RAM", $2 / 1048576}' /proc/meminfo); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)
- $("$GO" version), SoftHSM $softhsm (file object store)

## How it was measured

custodyd runs from a dev-style config (SoftHSM token, bbolt store, audit log on:
every record flushed before the answer, mTLS 1.3 with the dev certificates) with
\`--pprof\`; the load client (\`custodyctl bench\`) runs on the same machine as the
dev relay. Each cell is a closed loop of c workers over ceil(c/4) gRPC connections
for $DURATION, 32-byte payloads and an encryption context of one pair, requests
spread over the named number of keys. Latency is per call. Right after the vault,
the same cell runs against:

- **raw HSM** — \`custody-hsmbench\`: the same operation through package hsm directly
  on the same token, same concurrency, one process, no gRPC, authorisation or audit;
- **echo** (decrypt and encrypt cells) — \`custody-echo\`: a gRPC server that echoes
  its input over the same mutual TLS and transport options as custodyd, driven by the
  same client code. vault/echo is what the vault's own work (HSM, authorisation,
  budget, durable audit) leaves of a bare gRPC call.

Batch decrypt counts items (100 per call); its raw figure is single decrypts.
decrypt-coalesced is decrypt through the Go client package with
\`CoalesceDecrypts\` (one client, one connection, calls gathered into BatchDecrypt;
docs/relay.md). "custodyd cores" and "client cores" are CPU time over the vault run
divided by its length (from /proc and getrusage); "load" is the one-minute load
average when the cell began. The machine may be shared: compare ratios within a
row, not rates across runs. Budgets are on: the generated config gives the bench
relay a budget on every key, set high enough that none is refused, so every request
pays the budget check.

Key creation: $KEYS_CREATED AES-256 master keys created in ${KEYS_SECONDS} s over gRPC
(8 at a time).

## Results

MD
  ctl bench report --results "$RESULTS" --rss-mb "$(awk -v k="$RSS_KB" 'BEGIN {printf "%.1f", k / 1024}')" \
    --hwm-mb "$(awk -v k="$HWM_KB" 'BEGIN {printf "%.1f", k / 1024}')" \
    --startup-seconds "$STARTUP" --startup-keys "$((MANY + 2 * FEW + 1))"
  cat <<MD

Memory: VmRSS sampled every 0.2 s during the decrypt run with $MANY keys at
concurrency 8 (highest sample), VmHWM read at the end of it (peak since start).
Start-up: from exec of custodyd to the first 200 from /readyz, with the store
holding $((MANY + 2 * FEW + 1)) keys. ${STARTUP_NOTE}

## The audit disk: flush latency

One 300-byte record written and flushed, 2000 times, five ways interleaved record by
record on the file system of the vault's audit directory (\`go test -bench Flush
./internal/audit/\`). The log writes into segments preallocated with fallocate and
flushes with fdatasync (prealloc-fdatasync); it used to append and fsync
(append-fsync).

$(flush_table)

## Where the time goes

custodyd's CPU in each profiled cell, by the code on the stack (\`go tool pprof
-focus\`; a sample counts in every category whose code is on its stack, so nested
categories overlap and rows do not add up to 100%).

### Decrypt, concurrency 8

$(breakdown decrypt8)

### Decrypt, concurrency 64

$(breakdown decrypt64)

### Batch decrypt (100 items per call), concurrency 8

$(breakdown batch8)

### Top of the profile: decrypt, concurrency 8 (\`go tool pprof -top -cum\`)

\`\`\`
$(top_profile "$WORK/cpu-decrypt8.pprof")
\`\`\`

### Top of the profile: batch decrypt, concurrency 8

\`\`\`
$(top_profile "$WORK/cpu-batch8.pprof" | sed -n '1,25p')
\`\`\`

$(cat "$WORK/replicas.md")

Reproduce: \`make bench\` (BENCH_DURATION and BENCH_MANY_KEYS adjust it); one cell by
hand: \`custodyctl bench --help\`. Raw PKCS#11 micro-benchmarks: \`make bench-raw\`.
MD
  # What is not measured here is kept: the soak section (make soak,
  # softhsm-test/soak.sh) and notes written by hand, from the first of
  # those headings to the end.
  if [[ -f "$OUT" ]] && grep -qE '^## (Soak|Notes)' "$OUT"; then
    echo
    awk '/^## (Soak|Notes)/ {keep=1} keep' "$OUT"
  fi
} >"$tmp_out"
mkdir -p "$(dirname "$OUT")"
cp "$tmp_out" "$OUT"
log "wrote $OUT"
cat "$OUT"
