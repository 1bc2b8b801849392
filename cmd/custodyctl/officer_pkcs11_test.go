package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/custodyhq/custody/hsm/hsmtest"
	"github.com/custodyhq/custody/internal/quorum"
)

var (
	builtOnce sync.Once
	builtPath string
	builtErr  error
	builtDir  string
)

// builtCLI builds custodyctl once per test binary. Tests that use crypto11
// run it as a subprocess: crypto11's Close calls C_Finalize, which must
// never happen in a process that also hosts an HSM user.
func builtCLI(t *testing.T) string {
	t.Helper()
	builtOnce.Do(func() {
		builtDir, builtErr = os.MkdirTemp("", "custodyctl-bin-")
		if builtErr != nil {
			return
		}
		builtPath = filepath.Join(builtDir, "custodyctl")
		out, err := exec.Command("go", "build", "-o", builtPath, ".").CombinedOutput()
		if err != nil {
			builtErr = err
			builtPath = string(out)
		}
	})
	if builtErr != nil {
		t.Fatalf("go build custodyctl: %v\n%s", builtErr, builtPath)
	}
	return builtPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		_ = os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

// tokenKeyPair generates an ECDSA P-256 key pair on the token with
// pkcs11-tool (the private key never leaves it) and returns its officer.
func tokenKeyPair(t *testing.T, tok *hsmtest.Token, label string) quorum.Officer {
	t.Helper()
	run := func(args ...string) {
		cmd := exec.Command("pkcs11-tool", append([]string{"--module", tok.Library, "--token-label", tok.Label}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pkcs11-tool %v: %v\n%s", args, err, out)
		}
	}
	run("--login", "--pin", tok.PIN, "--keypairgen", "--key-type", "EC:prime256v1", "--label", label, "--id", "0a0b")
	pubFile := filepath.Join(t.TempDir(), "pub.der")
	run("--read-object", "--type", "pubkey", "--label", label, "-o", pubFile)
	der, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	return quorum.Officer{Name: label, PublicKey: der}
}

func TestTokenSignerApprovalsVerifyUnderTheOfficersKey(t *testing.T) {
	bin := builtCLI(t)
	tok := hsmtest.New(t)
	off := tokenKeyPair(t, tok, "alice")
	if err := off.Validate(); err != nil {
		t.Fatalf("token public key: %v", err)
	}

	p, d := testProposal(t)
	canon, err := p.CanonicalBytes()
	if err != nil {
		t.Fatal(err)
	}
	propFile := filepath.Join(t.TempDir(), "proposal.bin")
	if err := os.WriteFile(propFile, canon, 0o644); err != nil {
		t.Fatal(err)
	}
	uri := "pkcs11:token=" + tok.Label + ";object=alice?module-path=" + tok.Library
	sign := func(pin string, extra ...string) (int, string, string) {
		cmd := exec.Command(bin, append([]string{"--output", "json", "proposal", "sign", propFile,
			"--officer-pkcs11", uri, "--officer-pin-env", "OFFICER_PIN", "--yes"}, extra...)...)
		cmd.Env = append(os.Environ(), "OFFICER_PIN="+pin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, out.String(), errb.String()
	}

	code, stdout, stderr := sign(tok.PIN)
	if code != 0 {
		t.Fatalf("proposal sign: exit %d\n%s", code, stderr)
	}
	var got map[string]string
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("output %q: %v", stdout, err)
	}
	sig, err := base64.StdEncoding.DecodeString(got["signature"])
	if err != nil {
		t.Fatal(err)
	}
	if err := quorum.VerifyApproval(off, d, sig); err != nil {
		t.Fatalf("token-made approval does not verify under the token's public key: %v", err)
	}
	if got["fingerprint"] != off.Fingerprint() || got["digest"] != d.String() {
		t.Errorf("output %v, want fingerprint %s digest %s", got, off.Fingerprint(), d)
	}
	if !strings.Contains(stderr, "rotate key \"relay-messages\"") {
		t.Errorf("the officer was not shown what they sign; stderr %q", stderr)
	}

	// A veto is a different signature, not interchangeable with an approval.
	code, stdout, stderr = sign(tok.PIN, "--veto")
	if code != 0 {
		t.Fatalf("veto: exit %d\n%s", code, stderr)
	}
	_ = json.Unmarshal([]byte(stdout), &got)
	veto, _ := base64.StdEncoding.DecodeString(got["signature"])
	if quorum.VerifyVeto(off, d, veto) != nil || quorum.VerifyApproval(off, d, veto) == nil {
		t.Error("veto signature is not a veto, or also counts as an approval")
	}

	// A wrong PIN fails with one line that does not contain either PIN.
	code, _, stderr = sign("9999-wrong-pin")
	if code != exitError || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("wrong PIN: exit %d, stderr %q", code, stderr)
	}
	if strings.Contains(stderr, "9999-wrong-pin") || strings.Contains(stderr, tok.PIN) {
		t.Errorf("error line leaks a PIN: %q", stderr)
	}
}
