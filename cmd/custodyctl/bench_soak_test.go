package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/testenv"
)

// soakEnv is a custodyd (gateway on) whose dev relay holds the grants and
// budgets softhsm-test/soak.sh configures, and the recipient key's PEM.
func soakEnv(t *testing.T) (*testenv.Env, string) {
	t.Helper()
	rk, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(t.TempDir(), "relay-rsa.pub.pem")
	if err := os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	pin := sha256.Sum256(der)
	e := testenv.Start(t, testenv.Settings{Gateway: true, Mutate: func(_ *testenv.Env, c *config.Config) {
		aes := []string{"soak-aes-0", "soak-aes-1"}
		c.Grants = append(c.Grants,
			config.GrantConfig{Identity: "dev-relay", Keys: aes, AllowPlaintext: true, RecipientKeys: []string{hex.EncodeToString(pin[:])},
				Operations: []config.Operation{config.OpEncrypt, config.OpDecrypt, config.OpDataKey, config.OpUnwrap, config.OpRewrap}},
			config.GrantConfig{Identity: "dev-relay", Keys: []string{"soak-p256-0"}, Operations: []config.Operation{config.OpSign, config.OpVerify, config.OpPublicKey}},
			config.GrantConfig{Identity: "dev-relay", Keys: []string{"soak-hmac-0"}, Operations: []config.Operation{config.OpMAC, config.OpVerifyMAC}},
			config.GrantConfig{Identity: "dev-relay", Keys: []string{"soak-budget"}, Operations: []config.Operation{config.OpEncrypt}})
		for _, k := range append(aes, "soak-p256-0", "soak-hmac-0") {
			c.Budgets = append(c.Budgets, config.BudgetConfig{Identity: "dev-relay", Key: k, Rate: 1e6, Burst: 1e6, Volume: 1 << 40, Window: time.Hour})
		}
		c.Budgets = append(c.Budgets, config.BudgetConfig{Identity: "dev-relay", Key: "soak-budget", Rate: 1, Burst: 1, Volume: 1 << 30, Window: time.Hour})
		c.Governance.Freeze = config.FreezeConfig{Refusals: 10000, Within: time.Second}
	}})
	return e, pub
}

// TestBenchSoakRunsEveryOperationAndSamplesCustodyd runs a few seconds of
// the soak against an in-process custodyd (so --pid is this process) and
// checks that every operation of the mix ran without an unexpected error,
// that the budgeted key was refused as designed, and that every series was
// sampled. A run this short decides nothing about memory, so the verdict's
// memory limit is lifted.
func TestBenchSoakRunsEveryOperationAndSamplesCustodyd(t *testing.T) {
	e, pub := soakEnv(t)
	report := filepath.Join(t.TempDir(), "soak.md")
	op := e.Cert["operator"]
	args := append(as(e, "relay"), "-o", "json", "bench", "soak", "--duration", "4s", "--sample-every", "400ms", "-c", "4", "--keys", "2",
		"--pid", strconv.Itoa(os.Getpid()), "--metrics-url", "http://"+e.HTTPAddr+"/metrics", "--audit-dir", e.Config.Audit.Dir,
		"--gateway", e.GatewayAddr, "--recipient-pub", pub, "--report", report, "--label", "test soak", "--quiet",
		"--max-rss-per-million", "1e9", "--setup-cert", op.CertFile, "--setup-key", op.KeyFile)
	inv := runCLI(t, nil, args...)
	var r soakResult
	if err := json.Unmarshal([]byte(inv.stdout), &r); err != nil {
		t.Fatalf("soak output is not one JSON result (exit %d): %v\n%s\nstderr: %s", inv.code, err, inv.stdout, inv.stderr)
	}
	for _, want := range []string{"encrypt", "decrypt", "datakey", "unwrap", "datakey-without-plaintext", "unwrap-kwp",
		"datakey-recipient", "unwrap-recipient", "rewrap", "batch-encrypt", "batch-decrypt", "batch-unwrap", "sign", "verify",
		"public-key", "mac", "verify-mac", "store", "fetch", "fetch-recipient", "delete", "rest-encrypt", "rest-decrypt",
		"rest-datakey", "rest-unwrap", "budgeted-encrypt"} {
		if c := r.Ops[want]; c == nil || c.Requests == 0 {
			t.Errorf("operation %s never ran", want)
		}
	}
	last := r.Samples[len(r.Samples)-1]
	if last.Errors != 0 || r.FirstError != "" {
		t.Fatalf("%d unexpected failures; first: %s", last.Errors, r.FirstError)
	}
	if last.Refused == 0 || r.Ops["budgeted-encrypt"].Errors["ResourceExhausted"] != last.Refused {
		t.Errorf("budgeted key: %d refusals, ops %+v", last.Refused, r.Ops["budgeted-encrypt"])
	}
	if len(r.Samples) < 8 || last.RSSMB <= 0 || last.FDs <= 0 || last.Threads <= 0 || last.Goroutines <= 0 ||
		last.AuditBytes <= r.Samples[0].AuditBytes || last.ServerRequests == 0 || last.SessionObjects <= 0 || last.AuditRecords == 0 || r.AuditBytesPerRecord <= 0 {
		t.Fatalf("series not sampled: %d samples, last %+v", len(r.Samples), last)
	}
	for _, reason := range r.Reasons {
		if strings.Contains(reason, "failed unexpectedly") || strings.Contains(reason, "resident memory") {
			t.Errorf("verdict reason %q", reason)
		}
	}
	if (inv.code == 0) != r.Pass {
		t.Errorf("exit %d with verdict pass=%v", inv.code, r.Pass)
	}
	md, err := os.ReadFile(report)
	if err != nil || !strings.Contains(string(md), "### test soak") || !strings.Contains(string(md), "| t (s) | requests | RSS (MB) |") {
		t.Fatalf("report: %v\n%s", err, md)
	}
}

// flatSamples are 30 samples 10 s apart, 10,000 requests each, with the
// given RSS and goroutines per sample index.
func flatSamples(rss func(i int) float64, goroutines func(i int) int) []soakSample {
	var out []soakSample
	for i := range 31 {
		out = append(out, soakSample{Elapsed: float64(10 * i), Requests: uint64(10_000 * i), RSSMB: rss(i),
			Goroutines: goroutines(i), Threads: 12, FDs: 20, AuditBytes: int64(4_000_000 * i), AuditRecords: uint64(12_500 * i)})
	}
	return out
}

func TestSoakVerdict(t *testing.T) {
	base := func() *soakResult {
		return &soakResult{Duration: 300, Warmup: 0.2, MaxRSSPerMillion: 5}
	}
	tests := []struct {
		name    string
		samples []soakSample
		pass    bool
		reason  string
	}{
		{"flat with a sawtooth", flatSamples(func(i int) float64 { return 60 + float64(i%4) }, func(int) int { return 40 }), true, ""},
		{"warm-up growth only", flatSamples(func(i int) float64 { return 30 + 5*float64(min(i, 5)) }, func(int) int { return 40 }), true, ""},
		// 240 bytes a request: the SoftHSM leak, ~229 MB per million.
		{"leaking memory", flatSamples(func(i int) float64 { return 40 + float64(i)*10_000*240/(1<<20) }, func(int) int { return 40 }), false, "resident memory"},
		{"just under the limit", flatSamples(func(i int) float64 { return 40 + float64(i)*0.04 }, func(int) int { return 40 }), true, ""},
		{"goroutine leak", flatSamples(func(int) float64 { return 40 }, func(i int) int { return 40 + 5*i }), false, "goroutines kept rising"},
		{"one goroutine burst", flatSamples(func(int) float64 { return 40 }, func(i int) int { return 40 + 50*b2i(i == 29) }), true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := base()
			r.Samples = tc.samples
			r.judge()
			if r.Pass != tc.pass || (tc.reason != "" && !strings.Contains(strings.Join(r.Reasons, ";"), tc.reason)) {
				t.Fatalf("pass=%v reasons=%v (rss %.2f MB/M); want pass=%v with %q", r.Pass, r.Reasons, r.RSSPerMillion, tc.pass, tc.reason)
			}
			if r.AuditBytesPerRequest != 400 || r.AuditBytesPerRecord != 320 {
				t.Errorf("audit bytes per request %.1f, per record %.1f; want 400 and 320", r.AuditBytesPerRequest, r.AuditBytesPerRecord)
			}
		})
	}
	r := base()
	r.Samples = flatSamples(func(int) float64 { return 40 }, func(int) int { return 40 })
	r.Samples[len(r.Samples)-1].Errors = 3
	r.FirstError = "decrypt: boom"
	if r.judge(); r.Pass || !strings.Contains(strings.Join(r.Reasons, ";"), "3 requests failed unexpectedly (first: decrypt: boom)") {
		t.Fatalf("unexpected errors passed: %v", r.Reasons)
	}
	r = base()
	r.Samples = flatSamples(func(int) float64 { return 40 }, func(int) int { return 40 })[:5]
	if r.judge(); r.Pass {
		t.Fatal("a verdict from 5 samples")
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
