package main

import (
	"bufio"
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/testenv"
)

// benchEnv is a custodyd whose dev relay may use the bench keys of every
// class; the keys themselves are created by bench --setup.
func benchEnv(t *testing.T, n int) *testenv.Env {
	t.Helper()
	ops := []config.Operation{config.OpEncrypt, config.OpDecrypt, config.OpDataKey, config.OpUnwrap, config.OpSign, config.OpMAC}
	var names []string
	for _, c := range []benchKeyClass{benchAES, benchP256, benchHMAC} {
		names = append(names, benchKeyNames("bench-", c, n)...)
	}
	return testenv.Start(t, testenv.Settings{Mutate: testenv.Grant("relay", names, ops, true)})
}

func setupArgs(e *testenv.Env) []string {
	op := e.Cert["operator"]
	return []string{"--setup", "--setup-cert", op.CertFile, "--setup-key", op.KeyFile}
}

func parseBench(t *testing.T, inv invocation) benchResult {
	t.Helper()
	var r benchResult
	if err := json.Unmarshal([]byte(inv.stdout), &r); err != nil {
		t.Fatalf("bench output is not one JSON result: %v\n%s\nstderr: %s", err, inv.stdout, inv.stderr)
	}
	return r
}

func TestBenchOneSecondDecryptReportsRateLatencyAndJSON(t *testing.T) {
	e := benchEnv(t, 3)
	args := append(as(e, "relay"), "bench", "--op", "decrypt", "--duration", "1s", "--keys", "3", "-c", "4", "--quiet", "-o", "json")
	inv := runCLI(t, nil, append(args, setupArgs(e)...)...)
	if inv.code != 0 {
		t.Fatalf("bench: exit %d: %s", inv.code, inv.stderr)
	}
	r := parseBench(t, inv)
	if r.OpsPerSec <= 0 || r.Ops == 0 || r.Calls < r.Ops {
		t.Fatalf("ops/s %v, ops %d, calls %d: want a positive rate", r.OpsPerSec, r.Ops, r.Calls)
	}
	if r.KeysCreated != 3 || r.Keys != 3 || r.Connections != 1 {
		t.Errorf("keys created %d, keys %d, connections %d; want 3, 3, 1", r.KeysCreated, r.Keys, r.Connections)
	}
	if r.Seconds < 0.9 || r.Seconds > 5 {
		t.Errorf("measured %.2fs for a 1s run", r.Seconds)
	}
	if len(r.Errors) != 0 {
		t.Errorf("errors %v", r.Errors)
	}
	l := r.Latency
	if !(l.P50 > 0 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.Max) {
		t.Errorf("latency percentiles out of order: %+v", l)
	}
	if inv.stderr != "" {
		t.Errorf("--quiet still wrote %q", inv.stderr)
	}

	// A second --setup finds the keys already there and creates none.
	again := runCLI(t, nil, append(append(as(e, "relay"), "bench", "--op", "decrypt", "--count", "10", "--keys", "3", "-q", "-o", "json"), setupArgs(e)...)...)
	if again.code != 0 {
		t.Fatalf("second bench: %d %s", again.code, again.stderr)
	}
	if r2 := parseBench(t, again); r2.KeysCreated != 0 || r2.Calls != 10 {
		t.Errorf("second run created %d keys and made %d calls; want 0 and exactly --count 10", r2.KeysCreated, r2.Calls)
	}
}

func TestBenchEveryOperationSucceeds(t *testing.T) {
	e := benchEnv(t, 2)
	for _, op := range benchOps {
		t.Run(op, func(t *testing.T) {
			args := append(as(e, "relay"), "bench", "--op", op, "--duration", "300ms", "--keys", "2", "-c", "2", "--batch", "10", "-q", "-o", "json")
			inv := runCLI(t, nil, append(args, setupArgs(e)...)...)
			if inv.code != 0 {
				t.Fatalf("exit %d: %s", inv.code, inv.stderr)
			}
			r := parseBench(t, inv)
			if r.Ops == 0 || len(r.Errors) != 0 {
				t.Fatalf("%s: %d ops, errors %v (%s)", op, r.Ops, r.Errors, r.FirstError)
			}
			if op == "batch-decrypt" && (r.Batch != 10 || r.Ops != 10*r.Calls) {
				t.Errorf("batch of 10: %d ops over %d calls", r.Ops, r.Calls)
			}
		})
	}
}

func TestBenchTextShowsProgressAndTable(t *testing.T) {
	e := benchEnv(t, 1)
	inv := runCLI(t, nil, append(append(as(e, "relay"), "bench", "--op", "sign", "--duration", "1500ms", "-c", "2"), setupArgs(e)...)...)
	if inv.code != 0 {
		t.Fatalf("exit %d: %s", inv.code, inv.stderr)
	}
	for _, want := range []string{"ops/s", "p50", "p99", "max", "no errors"} {
		if !strings.Contains(inv.stdout, want) {
			t.Errorf("table lacks %q:\n%s", want, inv.stdout)
		}
	}
	if !strings.Contains(inv.stderr, "\rbench sign:") || !strings.Contains(inv.stderr, "ops/s") {
		t.Errorf("no live progress line on stderr: %q", inv.stderr)
	}
}

func TestBenchCountsDeniedCallsByCodeAndFails(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{}) // no grant for the bench keys
	inv := runCLI(t, nil, append(append(as(e, "relay"), "bench", "--op", "mac", "--count", "20", "-c", "2", "-q", "-o", "json"), setupArgs(e)...)...)
	if inv.code != 1 {
		t.Fatalf("exit %d, want 1 when nothing succeeds (stderr %q)", inv.code, inv.stderr)
	}
	r := parseBench(t, inv)
	if r.Errors["PermissionDenied"] != 20 || r.Ops != 0 {
		t.Fatalf("errors %v ops %d; want 20 PermissionDenied", r.Errors, r.Ops)
	}
	if !strings.HasPrefix(inv.stderr, "custodyctl: PermissionDenied: no mac operation succeeded") {
		t.Errorf("stderr %q", inv.stderr)
	}
}

func TestBenchRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "--op", "frobnicate"},
		{"bench", "--concurrency", "0"},
		{"bench", "--duration", "0s"},
		{"bench", "--keys", "0"},
		{"bench", "--setup"},
		{"bench", "--baseline"},
		{"bench", "--count", "5", "--cpuprofile", "cpu.pprof"},
		{"bench", "extra"},
	} {
		inv := runCLI(t, nil, append([]string{"--addr", "127.0.0.1:1", "--ca", "x", "--cert", "x", "--tls-key", "x"}, args...)...)
		assertOneErrorLine(t, inv, 2, local)
	}
}

// buildHSMBench compiles cmd/custody-hsmbench for the --baseline test.
func buildHSMBench(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	out := filepath.Join(t.TempDir(), hsmBenchName)
	cmd := exec.Command(goBin, "build", "-o", out, "../custody-hsmbench")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", hsmBenchName, err, b)
	}
	return out
}

func TestBenchBaselineMeasuresRawHSMOnTheSameToken(t *testing.T) {
	bin := buildHSMBench(t)
	e := benchEnv(t, 1)
	// custodyd keeps its audit mark in one token object, made at its first
	// checkpoint of a record (replaced in place after that): count from
	// when it exists.
	if _, err := e.Keys(t, "operator").ListKeys(context.Background(), &custodyv1.ListKeysRequest{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for e.D.AuditMarkStatus().GetTime() == "" && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	before := tokenFiles(t, e)
	args := append(as(e, "relay"), "bench", "--op", "decrypt", "--duration", "1s", "-c", "2", "-q", "-o", "json",
		"--baseline", "--hsmbench", bin, "--hsm-uri", e.Config.HSM.URI, "--hsm-pin-file", e.Config.HSM.PINFile)
	inv := runCLI(t, nil, append(args, setupArgs(e)...)...)
	if inv.code != 0 {
		t.Fatalf("exit %d: %s", inv.code, inv.stderr)
	}
	r := parseBench(t, inv)
	if r.Baseline == nil || r.Baseline.OpsPerSec <= 0 || r.Baseline.Op != "decrypt" {
		t.Fatalf("baseline %+v", r.Baseline)
	}
	if want := r.OpsPerSec / r.Baseline.OpsPerSec; math.Abs(r.Ratio-want) > 1e-9 || r.Ratio <= 0 {
		t.Errorf("ratio %v, want vault/raw = %v", r.Ratio, want)
	}
	// The raw bench made a temporary key and destroyed it: only the vault's
	// own new key (bench-aes-0) is added to the token.
	after := tokenFiles(t, e)
	if added := len(after) - len(before); added != 1 {
		t.Errorf("token gained %d objects, want 1 (the vault's bench key): before %v after %v", added, before, after)
	}
}

// tokenFiles lists the object files of the env's SoftHSM token.
func tokenFiles(t *testing.T, e *testenv.Env) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(e.Dir, "tokens", "*", "*.object"))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	return files
}

func TestHistogramQuantilesWithinBucketPrecision(t *testing.T) {
	var h latencyHist
	var exact []time.Duration
	for i := 1; i <= 100000; i++ {
		// A long-tailed spread from 1µs to ~1s.
		d := time.Duration(math.Pow(10, 3+6*float64(i)/100000))
		h.record(d)
		exact = append(exact, d)
	}
	slices.Sort(exact)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := exact[int(math.Ceil(q*float64(len(exact))))-1]
		got := h.quantile(q)
		if rel := math.Abs(float64(got-want)) / float64(want); rel > 1.0/64 {
			t.Errorf("q%.3f = %v, exact %v (off by %.2f%%)", q, got, want, 100*rel)
		}
	}
	if time.Duration(h.max) != exact[len(exact)-1] {
		t.Errorf("max %v, want %v", time.Duration(h.max), exact[len(exact)-1])
	}
	for _, v := range []uint64{0, 1, 63, 64, 65, 127, 128, 1000, 1 << 40, math.MaxUint64} {
		lo, hi := histBounds(histIndex(v))
		if v < lo || v > hi {
			t.Errorf("value %d outside its bucket [%d, %d]", v, lo, hi)
		}
	}
}

func TestBenchReportComparesTargets(t *testing.T) {
	lines := []benchResult{
		{Op: "decrypt", Concurrency: 8, Keys: 10, OpsPerSec: 16000, Seconds: 2, ServerCPUSeconds: 2.2, ClientCPUSeconds: 0.8, Load1: 3.5,
			Latency: benchLatency{P50: 0.4, P99: 2.5}, Errors: map[string]uint64{},
			Baseline: &hsmBenchResult{Op: "decrypt", OpsPerSec: 32000}, Ratio: 0.5,
			Echo: &benchEcho{OpsPerSec: 64000}, EchoRatio: 0.25},
		{Op: "decrypt", Concurrency: 1, Keys: 10, OpsPerSec: 3000, Latency: benchLatency{P50: 0.31, P99: 1}, Errors: map[string]uint64{}},
		{Op: "decrypt", Concurrency: 64, Keys: 10, OpsPerSec: 20000, Latency: benchLatency{P50: 3, P99: 9}, Errors: map[string]uint64{},
			Baseline: &hsmBenchResult{Op: "decrypt", OpsPerSec: 50000}, Ratio: 0.4},
		{Op: "decrypt", Concurrency: 8, Keys: 5000, OpsPerSec: 12000, Latency: benchLatency{P50: 0.5, P99: 4}, Errors: map[string]uint64{}},
		{Op: "sign", Concurrency: 8, Keys: 10, OpsPerSec: 4500, Latency: benchLatency{P50: 1, P99: 3}, Errors: map[string]uint64{"Unavailable": 2}},
		{Op: "batch-decrypt", Batch: 100, Concurrency: 8, Keys: 10, OpsPerSec: 45000, Latency: benchLatency{P50: 10, P99: 30}, Errors: map[string]uint64{},
			Baseline: &hsmBenchResult{Op: "decrypt", OpsPerSec: 50000}, Ratio: 0.9},
	}
	f := filepath.Join(t.TempDir(), "results.jsonl")
	var b strings.Builder
	for _, l := range lines {
		j, _ := json.Marshal(l)
		b.Write(j)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(f, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	inv := runCLI(t, nil, "bench", "report", "--results", f, "--hwm-mb", "120", "--rss-mb", "100", "--startup-seconds", "4.5", "--startup-keys", "5000")
	if inv.code != 0 {
		t.Fatalf("exit %d: %s", inv.code, inv.stderr)
	}
	for _, want := range []string{
		"| decrypt | 8 | 10 | 16000 | 0.400 | 2.500 | 32000 | 0.50 | 64000 | 0.25 | 1.10 | 0.40 | 3.5 | 0 |",
		"| sign | 8 | 10 | 4500 | 1.000 | 3.000 | — | — | — | — | — | — | — | Unavailable=2 |",
		"| Decrypt c=8 ≥ 12,000 ops/s, p50 ≤ 0.7 ms | 16000 ops/s, p50 0.40 ms | yes |",
		"| Decrypt c=1 ≥ 3,500 ops/s, p50 ≤ 0.3 ms | 3000 ops/s, p50 0.31 ms | **no** (14% short); **no**: p50 (3% over) |",
		"| ECDSA P-256 sign c=8 ≥ 12,000 ops/s | 4500 ops/s | **no** (62% short) |",
		"| GenerateDataKey c=8 ≥ 0.8× raw HSM generate | not measured | — |",
		"| Decrypt c=64 ≥ 0.5× raw HSM decrypt | 0.40× (20000 vs raw 50000 ops/s) | **no** (20% short) |",
		"| BatchDecrypt (100/call) c=8 ≥ 0.8× raw HSM decrypt | 0.90× (45000 vs raw 50000 ops/s) | yes |",
		"**no** (25% slower)",
		"| custodyd resident memory ≤ 150 MB under load | peak 120 MB (VmHWM), 100 MB at end of load (VmRSS) | yes |",
		"| Start-up to ready ≤ 3 s | 4.50 s with 5000 keys | **no** (50% over) |",
	} {
		if !strings.Contains(inv.stdout, want) {
			t.Errorf("report lacks %q:\n%s", want, inv.stdout)
		}
	}
}

// startEcho compiles cmd/custody-echo and starts it with the test
// custodyd's server certificate and client CA; it returns its address.
func startEcho(t *testing.T, e *testenv.Env) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "custody-echo")
	if b, err := exec.Command(goBin, "build", "-o", bin, "../custody-echo").CombinedOutput(); err != nil {
		t.Fatalf("build custody-echo: %v\n%s", err, b)
	}
	cmd := exec.Command(bin, "--cert", e.Config.TLS.CertFile, "--key", e.Config.TLS.KeyFile, "--client-ca", e.Config.TLS.ClientCAFile)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "custody-echo serving on ") {
		t.Fatalf("custody-echo printed %q, %v", line, err)
	}
	return strings.TrimSpace(strings.TrimPrefix(line, "custody-echo serving on "))
}

func TestBenchEchoRunsTheSameWorkloadOverBareGRPCAndReportsCPU(t *testing.T) {
	e := benchEnv(t, 1)
	echo := startEcho(t, e)
	for _, op := range []string{"decrypt", "batch-decrypt", "decrypt-coalesced"} {
		args := append(as(e, "relay"), "bench", "--op", op, "--duration", "500ms", "-c", "4", "--batch", "5", "-q", "-o", "json",
			"--echo-addr", echo, "--server-pid", strconv.Itoa(os.Getpid())) // custodyd runs in this test process
		inv := runCLI(t, nil, append(args, setupArgs(e)...)...)
		if inv.code != 0 {
			t.Fatalf("%s: exit %d: %s", op, inv.code, inv.stderr)
		}
		r := parseBench(t, inv)
		if r.Echo == nil || r.Echo.OpsPerSec <= 0 || r.Echo.Errors != 0 {
			t.Fatalf("%s: echo %+v", op, r.Echo)
		}
		if want := r.OpsPerSec / r.Echo.OpsPerSec; math.Abs(r.EchoRatio-want) > 1e-9 {
			t.Errorf("%s: vault/echo %v, want %v", op, r.EchoRatio, want)
		}
		if r.ServerCPUSeconds <= 0 || r.ClientCPUSeconds <= 0 {
			t.Errorf("%s: CPU not reported: custodyd %v s, client %v s", op, r.ServerCPUSeconds, r.ClientCPUSeconds)
		}
	}
	// custody-echo answers only what it can echo.
	inv := runCLI(t, nil, append(as(e, "relay"), "bench", "--op", "sign", "--echo-addr", echo, "--count", "1")...)
	assertOneErrorLine(t, inv, 2, local)
}

// TestBenchContextMatchesAContextBoundGrant: a ceremony's grants are bound
// to a context (tenant=acme); bench --context can run against them.
func TestBenchContextMatchesAContextBoundGrant(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{Mutate: func(_ *testenv.Env, c *config.Config) {
		c.Grants = []config.GrantConfig{{Identity: "dev-relay", Keys: []string{"demo"}, AllowPlaintext: true,
			Operations: []config.Operation{config.OpEncrypt, config.OpDecrypt, config.OpDataKey}, ContextMatch: map[string]string{"tenant": "acme"}}}
	}})
	base := append(as(e, "relay"), "bench", "--op", "datakey", "--key", "demo", "--count", "10", "-c", "2", "-q", "-o", "json")
	inv := runCLI(t, nil, append(base, "--context", "tenant=acme,region=eu")...)
	if inv.code != exitOK {
		t.Fatalf("bench --context tenant=acme: %+v", inv)
	}
	if r := parseBench(t, inv); r.Ops != 10 {
		t.Fatalf("ops %d, want 10", r.Ops)
	}
	// The default context (tenant=bench) does not match the grant.
	inv = runCLI(t, nil, base...)
	if inv.code != exitError || !strings.Contains(inv.stderr, "PermissionDenied") {
		t.Fatalf("bench with the default context against a tenant=acme grant: %+v", inv)
	}
	assertOneErrorLine(t, runCLI(t, nil, append(base, "--context", "novalue")...), exitUsage, local)
}
