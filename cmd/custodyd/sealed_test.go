package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/quorum"
)

func wantCode(t *testing.T, err error, want codes.Code, what string) {
	t.Helper()
	if status.Code(err) != want {
		t.Fatalf("%s: %v, want %v", what, err, want)
	}
}

// TestCeremonyReplacesTheInstallersPINWithOneOnlyOfficersHold: a fresh
// production custodyd (no pin_file, no pin_env) waits sealed for its
// ceremony; the ceremony takes the installer's PIN once, replaces it with a
// random PIN split 2-of-3 among the officers, and from then on every start
// needs two officers.
func TestCeremonyReplacesTheInstallersPINWithOneOnlyOfficersHold(t *testing.T) {
	v := newVault(t)
	v.start(t)

	// Sealed, awaiting the ceremony: readiness, crypto and status say so.
	if code, body := v.get(t, "/readyz"); code != 503 || !strings.Contains(body, "awaiting its key ceremony") {
		t.Fatalf("readyz before the ceremony: %d %q", code, body)
	}
	_, err := custodyv1.NewKeyServiceClient(v.conn(t, "operator")).ListKeys(tctx(t), &custodyv1.ListKeysRequest{})
	wantCode(t, err, codes.Unavailable, "ListKeys before the ceremony")
	if !strings.Contains(status.Convert(err).Message(), "sealed") {
		t.Fatalf("refusal does not say sealed: %v", err)
	}
	if st := v.sealStatus(t); st.GetState() != custodyv1.SealState_SEAL_STATE_AWAITING_CEREMONY || st.GetUnsealKeyFingerprint() != v.fingerprint(t) {
		t.Fatalf("status %v", st)
	}

	tdir := v.ceremony(t)
	var tr quorum.Transcript
	doc, _ := os.ReadFile(filepath.Join(tdir, "transcript.json"))
	if err := json.Unmarshal(doc, &tr); err != nil {
		t.Fatal(err)
	}
	if tr.Seal == nil || tr.Seal.PINSource != "officers" || tr.Seal.Threshold != 2 || len(tr.Seal.Shares) != 3 {
		t.Fatalf("transcript seal section %+v", tr.Seal)
	}
	// Serving after the ceremony, without a restart.
	if _, err := custodyv1.NewCryptoServiceClient(v.conn(t, "relay")).Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")}); err != nil {
		t.Fatalf("relay after the ceremony: %v", err)
	}
	v.stop(t, syscall.SIGTERM)

	// The installer's PIN no longer logs in; two shares recombine to one
	// that does; no file the vault uses holds it.
	rec := readRecord(t, filepath.Join(v.data, "custody.db"))
	alice, bob, carol := v.loadOfficer(t, "alice"), v.loadOfficer(t, "bob"), v.loadOfficer(t, "carol")
	pin := pinFromShares(t, rec, alice, carol)
	if !bytes.Equal(pin, pinFromShares(t, rec, bob, carol)) {
		t.Fatal("two pairs of shares recombine to different PINs")
	}
	if v.pkcs11Login(t, []byte(v.tok.PIN)) {
		t.Fatal("the installer's PIN still logs in after the ceremony")
	}
	if !v.pkcs11Login(t, pin) {
		t.Fatal("the recombined PIN does not log in")
	}
	for _, root := range []string{v.dir, v.tok.Dir} {
		filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(path)
			if bytes.Contains(b, pin) {
				t.Errorf("%s holds the new PIN", path)
			}
			return nil
		})
	}

	// Restart: sealed until two officers unseal.
	v.start(t)
	if st := v.sealStatus(t); st.GetState() != custodyv1.SealState_SEAL_STATE_SEALED || st.GetSharesNeeded() != 2 {
		t.Fatalf("after restart: %v", st)
	}
	// Alice also checks her share's commitment against the signed transcript.
	inv := v.ctlAs(t, "officer", nil, "unseal", "--officer-key", v.officerKey("alice"), "--expect-unseal-key", v.fingerprint(t), "--transcript", tdir)
	if inv.code != 0 || !strings.Contains(inv.stdout, "1 of 2") {
		t.Fatalf("alice: %+v", inv)
	}
	_, err = custodyv1.NewCryptoServiceClient(v.conn(t, "relay")).Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")})
	wantCode(t, err, codes.Unavailable, "encrypt with one share in")
	if inv := v.unseal(t, "bob"); inv.code != 0 || !strings.Contains(inv.stdout, "unsealed") {
		t.Fatalf("bob: %+v\n%s", inv, v.stderr)
	}
	if _, err := custodyv1.NewCryptoServiceClient(v.conn(t, "relay")).Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")}); err != nil {
		t.Fatalf("relay after unseal: %v", err)
	}
	v.stop(t, syscall.SIGTERM)
}
