package main

import (
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm/hsmtest"
	"github.com/custodyhq/custody/internal/seal"
)

// TestCeremonyRefusalsAreOnTheRecordAndATokenOfficerUnseals: while
// custodyd waits for its ceremony, a relay, a wrong installer PIN and a PIN
// sent to another unseal key are refused (and, once the audit log exists,
// on its record); then an officer whose signing and share keys live on a
// PKCS#11 token takes part in the ceremony and unseals with them.
func TestCeremonyRefusalsAreOnTheRecordAndATokenOfficerUnseals(t *testing.T) {
	v := newVault(t)
	// Alice keeps both her keys on her own token.
	atok := hsmtest.New(t)
	aenv := []string{"SOFTHSM2_CONF=" + atok.Conf, "OFFICER_PIN=" + atok.PIN}
	tool := func(args ...string) []byte {
		cmd := exec.Command("pkcs11-tool", append([]string{"--module", atok.Library, "--token-label", atok.Label, "--login", "--pin", atok.PIN}, args...)...)
		cmd.Env = append(os.Environ(), aenv...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pkcs11-tool %v: %v\n%s", args, err, out)
		}
		return out
	}
	tool("--keypairgen", "--key-type", "EC:prime256v1", "--label", "alice-sign", "--id", "01")
	tool("--keypairgen", "--key-type", "EC:prime256v1", "--usage-derive", "--label", "alice-share", "--id", "02")
	der := filepath.Join(t.TempDir(), "sign.der")
	tool("--read-object", "--type", "pubkey", "--label", "alice-sign", "-o", der)
	b, _ := os.ReadFile(der)
	for _, f := range []string{"alice", "alice.pub", "alice.share", "alice.share.pub"} {
		os.Remove(v.officerKey(f[:5]) + f[5:])
	}
	os.WriteFile(v.officerKey("alice")+".pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: b}), 0o644)
	signURI := "pkcs11:token=" + atok.Label + ";object=alice-sign?module-path=" + atok.Library
	shareURI := "pkcs11:token=" + atok.Label + ";object=alice-share?module-path=" + atok.Library
	if inv := v.runEnv(t, nil, aenv, "officer", "share-pub", "--share-pkcs11", shareURI, "--officer-pin-env", "OFFICER_PIN",
		"--out", v.officerKey("alice")+".share.pub"); inv.code != 0 {
		t.Fatalf("share-pub: %+v", inv)
	}

	v.start(t)
	ceremony := func(role string, pin string) result {
		return v.ctlAs(t, role, []byte(pin+"\n"), "ceremony", "init", "--config", v.ceremonyFile,
			"--transcript-out", filepath.Join(t.TempDir(), "tr"), "--pin-stdin", "--expect-unseal-key", v.fingerprint(t))
	}
	if inv := ceremony("relay", v.tok.PIN); inv.code == 0 || !strings.Contains(inv.stderr, "PermissionDenied") {
		t.Fatalf("relay runs the ceremony: %+v", inv)
	}
	if inv := ceremony("operator", "0000-not-the-pin"); inv.code == 0 || !strings.Contains(inv.stderr, "refused the installer's PIN") {
		t.Fatalf("wrong installer PIN: %+v", inv)
	}
	other, _ := seal.NewEphemeralKey()
	stale, _ := seal.SealPIN(other.PublicKey(), []byte(v.tok.PIN))
	_, err := custodyv1.NewGovernanceServiceClient(v.conn(t, "operator")).InitCeremony(tctx(t),
		&custodyv1.InitCeremonyRequest{EncryptedPin: stale, UnsealKeyFingerprint: other.Fingerprint()})
	wantCode(t, err, codes.FailedPrecondition, "PIN sent to another unseal key")
	if st := v.sealStatus(t); st.GetState() != custodyv1.SealState_SEAL_STATE_AWAITING_CEREMONY {
		t.Fatalf("after refusals: %v", st)
	}
	if inv := ceremony("operator", v.tok.PIN); inv.code != 0 {
		t.Fatalf("ceremony: %+v\n%s", inv, v.stderr)
	}
	var got []string
	for _, r := range auditRecords(t, filepath.Join(v.data, "audit")) {
		if r["method"] == "InitCeremony" && r["outcome"] != "intent" { // intent records precede each step
			got = append(got, fmt.Sprintf("%s/%s", r["outcome"], r["code"]))
		}
	}
	if want := []string{"denied/PermissionDenied", "denied/PermissionDenied", "error/FailedPrecondition", "ok/OK"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ceremony records %v, want %v", got, want)
	}

	// Restart; alice unseals with her token keys, bob with his files.
	v.stop(t, syscall.SIGTERM)
	v.start(t)
	inv := v.runEnv(t, nil, aenv, append(v.as("officer"), "unseal", "--officer-pkcs11", signURI, "--share-pkcs11", shareURI,
		"--officer-pin-env", "OFFICER_PIN", "--expect-unseal-key", v.fingerprint(t))...)
	if inv.code != 0 || !strings.Contains(inv.stdout, "1 of 2") {
		t.Fatalf("alice with her token: %+v", inv)
	}
	if inv := v.unseal(t, "bob"); inv.code != 0 || !strings.Contains(inv.stdout, "unsealed") {
		t.Fatalf("bob: %+v", inv)
	}
	v.stop(t, syscall.SIGTERM)
}
