package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
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
