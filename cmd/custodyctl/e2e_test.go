package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/testenv"
)

// as returns the global flags that connect as one of the env's clients.
func as(e *testenv.Env, who string) []string {
	c := e.Cert[who]
	return []string{"--addr", e.Addr, "--ca", e.CAFile, "--cert", c.CertFile, "--tls-key", c.KeyFile}
}

func TestCLIEncryptDecryptOneMiBThroughPipes(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	plain := make([]byte, 1<<20)
	rand.Read(plain)
	enc := runCLI(t, plain, append(as(e, "relay"), "crypto", "encrypt", "--key", "demo", "--context", "tenant=acme")...)
	if enc.code != 0 {
		t.Fatalf("encrypt: %d %s", enc.code, enc.stderr)
	}
	if bytes.Contains([]byte(enc.stdout), plain[:64]) {
		t.Fatal("plaintext visible in the output")
	}
	dec := runCLI(t, []byte(enc.stdout), append(as(e, "relay"), "crypto", "decrypt", "--key", "demo", "--context", "tenant=acme")...)
	if dec.code != 0 || !bytes.Equal([]byte(dec.stdout), plain) {
		t.Fatalf("decrypt: %d %s (%d bytes)", dec.code, dec.stderr, len(dec.stdout))
	}
	// The wrong context is refused in one line with a non-zero exit.
	bad := runCLI(t, []byte(enc.stdout), append(as(e, "relay"), "crypto", "decrypt", "--key", "demo", "--context", "tenant=evil")...)
	assertOneErrorLine(t, bad, 1, "InvalidArgument")
	if bad.stdout != "" {
		t.Fatalf("output despite failure: %d bytes", len(bad.stdout))
	}
}

func TestCLIKeyCommandsAndJSONOutput(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	op := as(e, "operator")
	inv := runCLI(t, nil, append(op, "--output", "json", "key", "create", "signer", "--purpose", "sign-ecdsa-p256")...)
	if inv.code != 0 {
		t.Fatalf("create: %s", inv.stderr)
	}
	var k map[string]any
	if err := json.Unmarshal([]byte(inv.stdout), &k); err != nil || k["name"] != "signer" {
		t.Fatalf("create --output json: %v %q", err, inv.stdout)
	}
	for _, args := range [][]string{
		{"key", "get", "signer"},
		{"key", "list"},
		{"key", "rotate", "signer"},
		{"key", "disable", "signer", "1"},
		{"key", "enable", "signer", "1"},
		{"key", "destroy", "signer", "1", "--after", "48h"},
		{"key", "cancel-destroy", "signer", "1"},
		{"status"},
	} {
		inv := runCLI(t, nil, append(append(op, "--output", "json"), args...)...)
		if inv.code != 0 {
			t.Fatalf("%v: %s", args, inv.stderr)
		}
		var v any
		if err := json.Unmarshal([]byte(inv.stdout), &v); err != nil {
			t.Fatalf("%v: output is not JSON: %v %q", args, err, inv.stdout)
		}
	}
	// A relay cannot list keys: one line, PermissionDenied, exit 1.
	assertOneErrorLine(t, runCLI(t, nil, append(as(e, "relay"), "key", "list")...), 1, "PermissionDenied")
	// Text output names the key.
	if out := runCLI(t, nil, append(op, "key", "list")...); out.code != 0 || !strings.Contains(out.stdout, "signer") {
		t.Fatalf("key list: %+v", out)
	}
	_ = custodyv1.KeyPurpose_SIGN_ECDSA_P256
}

// TestCLIStatusShowsTheHSMCapabilities: custodyctl status against a real
// custodyd prints, under the health line, what the HSM probe chose; its
// JSON carries the same.
func TestCLIStatusShowsTheHSMCapabilities(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	inv := runCLI(t, nil, append(as(e, "auditor"), "status")...)
	if inv.code != 0 {
		t.Fatalf("status: %+v", inv)
	}
	for _, want := range []string{" SERVING\n", "hsm: ready, profile softhsm", "aes_key_wrap_pad", "CKM_AES_KEY_WRAP_PAD (0x210A)",
		"rsa_oaep", "sha1", "extract_refused"} {
		if !strings.Contains(inv.stdout, want) {
			t.Errorf("status output lacks %q:\n%s", want, inv.stdout)
		}
	}
	inv = runCLI(t, nil, append(as(e, "auditor"), "--output", "json", "status")...)
	var got struct {
		Status string `json:"status"`
		HSM    struct {
			Profile      string `json:"profile"`
			Capabilities []struct {
				Name string `json:"name"`
				OK   bool   `json:"ok"`
			} `json:"capabilities"`
		} `json:"hsm"`
	}
	if err := json.Unmarshal([]byte(inv.stdout), &got); err != nil || got.Status != "SERVING" || got.HSM.Profile != "softhsm" || len(got.HSM.Capabilities) != 5 {
		t.Fatalf("json status: %v %q", err, inv.stdout)
	}
}

// TestClientCertificateFromAnotherCAIsReportedAsSuch: a relay certificate
// from a CA the vault does not trust is no outage; every command says
// UNAUTHENTICATED and which CA issued it and which custodyd trusts.
func TestClientCertificateFromAnotherCAIsReportedAsSuch(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	p := newPKI(t) // "test ca", unknown to the vault
	flags := []string{"--addr", e.Addr, "--ca", e.CAFile, "--cert", p.certFile, "--tls-key", p.keyFile}
	for _, args := range [][]string{{"status"}, {"crypto", "encrypt", "--key", "demo"}, {"--timeout", "0", "status"}} {
		inv := runCLI(t, []byte("x"), append(append([]string{}, flags...), args...)...)
		assertOneErrorLine(t, inv, exitError, "Unauthenticated")
		for _, want := range []string{"custodyd did not accept this client certificate", `issued by "CN=test ca"`, `custodyd trusts "CN=Custody dev CA,O=Custody dev"`} {
			if !strings.Contains(inv.stderr, want) {
				t.Errorf("%v: stderr %q lacks %q", args, inv.stderr, want)
			}
		}
	}
}

// TestKeyGetAndTranscriptSayTheSameForASafeKey: both list the same
// attributes, read back from the HSM, for the same "ok".
func TestKeyGetAndTranscriptSayTheSameForASafeKey(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	inv := runCLI(t, nil, append(as(e, "operator"), "key", "get", "demo")...)
	want := formatTranscriptAttrs(TranscriptAttr{Token: true, Private: true, Sensitive: true, AlwaysSensitive: true, NeverExtractable: true, Local: true})
	if want != "ok (token, private, sensitive, never extractable, local, not modifiable)" {
		t.Fatalf("transcript wording changed: %q", want)
	}
	if inv.code != exitOK || !strings.Contains(inv.stdout, want) {
		t.Fatalf("key get does not say %q:\n%s%s", want, inv.stdout, inv.stderr)
	}
	inv = runCLI(t, nil, append(as(e, "operator"), "--output", "json", "key", "get", "demo")...)
	for _, f := range []string{`"token":true`, `"private":true`, `"modifiable":false`} {
		if !strings.Contains(inv.stdout, f) {
			t.Errorf("key get --output json lacks %s: %s", f, inv.stdout)
		}
	}
}

// TestStatusShowsTheSealAndThePINSource: status says whether custodyd is
// sealed and where its PIN comes from; a dev vault's is a file on the host.
func TestStatusShowsTheSealAndThePINSource(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	inv := runCLI(t, nil, append(as(e, "auditor"), "status")...)
	if inv.code != 0 || !strings.Contains(inv.stdout, "SERVING") || !strings.Contains(inv.stdout, "seal:        unsealed") ||
		!strings.Contains(inv.stdout, "pin source:  pin_file (the HSM PIN is ON THIS HOST") {
		t.Fatalf("status: %+v", inv)
	}
	inv = runCLI(t, nil, append(as(e, "auditor"), "--output", "json", "seal", "status")...)
	var st map[string]any
	if inv.code != 0 || json.Unmarshal([]byte(inv.stdout), &st) != nil || st["state"] != "SEAL_STATE_UNSEALED" || st["pin_source"] != "pin_file" {
		t.Fatalf("seal status: %+v", inv)
	}
	// Unsealing an unsealed vault is refused, in one line.
	key := filepath.Join(t.TempDir(), "alice")
	if inv := keygen(t, "--out", key); inv.code != 0 {
		t.Fatal(inv)
	}
	inv = runCLI(t, nil, append(as(e, "officer"), "unseal", "--officer-key", key, "--yes")...)
	assertOneErrorLine(t, inv, 1, "FailedPrecondition")
	if !strings.Contains(inv.stderr, "not sealed") {
		t.Fatalf("unseal on an unsealed vault: %+v", inv)
	}
}

// TestCLIUsesAnotherReplicaWhenOneIsDown: with a dead replica listed first
// (repeated --addr) and then as part of a comma list, every command is
// still answered by the live custodyd.
func TestCLIUsesAnotherReplicaWhenOneIsDown(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	c := e.Cert["relay"]
	tlsFlags := []string{"--ca", e.CAFile, "--cert", c.CertFile, "--tls-key", c.KeyFile}
	for _, addr := range [][]string{
		{"--addr", "127.0.0.1:1", "--addr", e.Addr},
		{"--addr", e.Addr + ",127.0.0.1:1"},
	} {
		for i := range 5 {
			args := append(append(append([]string{}, addr...), tlsFlags...), "crypto", "encrypt", "--key", "demo")
			enc := runCLI(t, []byte("hello"), args...)
			if enc.code != 0 {
				t.Fatalf("%v call %d: %s", addr, i, enc.stderr)
			}
			args = append(append(append([]string{}, addr...), tlsFlags...), "crypto", "decrypt", "--key", "demo")
			if dec := runCLI(t, []byte(enc.stdout), args...); dec.code != 0 || dec.stdout != "hello" {
				t.Fatalf("%v decrypt %d: %d %s", addr, i, dec.code, dec.stderr)
			}
		}
	}
}
