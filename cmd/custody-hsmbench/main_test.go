package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/hsm/hsmtest"
)

func pinFile(t *testing.T, pin string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(f, []byte(pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func objectFiles(t *testing.T, tok *hsmtest.Token) int {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(tok.TokenDir, "*", "*.object"))
	if err != nil {
		t.Fatal(err)
	}
	return len(files)
}

func runBench(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestRawBenchPrintsOneResultAndLeavesNoKeyBehind(t *testing.T) {
	tok := hsmtest.New(t)
	pin := pinFile(t, tok.PIN)
	before := objectFiles(t, tok)
	for _, op := range ops {
		t.Run(op, func(t *testing.T) {
			code, stdout, stderr := runBench(t, "--uri", tok.URI, "--pin-file", pin, "--op", op, "--concurrency", "2", "--duration", "200ms")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var r result
			if err := json.Unmarshal([]byte(stdout), &r); err != nil {
				t.Fatalf("output %q is not one JSON result: %v", stdout, err)
			}
			if r.Op != op || r.Ops == 0 || r.OpsPerSec <= 0 || r.Errors != 0 || r.P50 > r.P99 {
				t.Errorf("result %+v", r)
			}
			if n := objectFiles(t, tok); n != before {
				t.Errorf("token holds %d objects after the run, %d before: the temporary key was not destroyed", n, before)
			}
		})
	}
}

func TestRawBenchWrongPINFailsWithoutPrintingIt(t *testing.T) {
	tok := hsmtest.New(t)
	const wrong = "not-the-pin-4242"
	code, stdout, stderr := runBench(t, "--uri", tok.URI, "--pin-file", pinFile(t, wrong), "--op", "sign", "--duration", "100ms")
	if code != 1 || stdout != "" {
		t.Fatalf("exit %d, stdout %q; want 1 and nothing", code, stdout)
	}
	if strings.Contains(stderr, wrong) || !strings.HasPrefix(stderr, "custody-hsmbench: open token") {
		t.Errorf("stderr %q", stderr)
	}
}

func TestRawBenchRejectsBadInvocations(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--uri", "pkcs11:token=x"},
		{"--uri", "pkcs11:token=x", "--pin-file", "p", "--op", "rot13"},
		{"--uri", "pkcs11:token=x", "--pin-file", "p", "--concurrency", "0"},
		{"--uri", "pkcs11:token=x", "--pin-file", "p", "--duration", "0s"},
		{"--uri", "pkcs11:token=x", "--pin-file", "p", "extra"},
		{"--pin", "1234"},
	} {
		if code, _, _ := runBench(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}
