package main

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/seal"
	"github.com/custodyhq/custody/internal/secmem/memscan"
)

// submitAs makes officer o's submission in-process (what custodyctl unseal
// does), letting the test alter the share first.
func (v *vault) submitAs(t *testing.T, o officer, alter func(share []byte)) *custodyv1.UnsealRequest {
	t.Helper()
	c := custodyv1.NewSealServiceClient(v.conn(t, "officer"))
	es, err := c.GetShare(tctx(t), &custodyv1.GetShareRequest{OfficerFingerprint: o.fp})
	if err != nil {
		t.Fatalf("GetShare %s: %v", o.name, err)
	}
	ref := seal.VaultRef{VaultID: es.GetVaultId(), Epoch: es.GetEpoch()}
	sh, err := seal.OpenShare(o.share, ref, seal.Envelope{Index: int(es.GetIndex()), ShareKey: es.GetSharePublicKeyDer(),
		Sealed: es.GetSealedShare(), Commitment: es.GetCommitment()})
	if err != nil {
		t.Fatal(err)
	}
	share := bytes.Clone(sh.Bytes())
	sh.Destroy()
	if alter != nil {
		alter(share)
	}
	sub, err := seal.Submit(o.signer, share, seal.Target{Ref: ref, Index: int(es.GetIndex()), EphemeralKey: es.GetUnsealPublicKeyDer(), Nonce: es.GetNonce()})
	if err != nil {
		t.Fatal(err)
	}
	return &custodyv1.UnsealRequest{VaultId: sub.Ref.VaultID, Epoch: sub.Ref.Epoch, Index: uint32(sub.Index), OfficerFingerprint: sub.OfficerFingerprint,
		UnsealKeyFingerprint: sub.EphemeralFingerprint, Nonce: sub.Nonce, SealedShare: sub.Sealed, Signature: sub.Signature}
}

// TestSealedVaultDrill is the drill of a rogue operator with root on the
// vault's host against a production vault after a 2-of-3 ceremony: the PIN
// is in no file; every restart (crash, second instance) needs two officers;
// wrong, replayed, corrupt and non-officer shares are refused and on the
// audit record; a second custodyd on the token is refused even when
// unsealed; the token going away and coming back needs no officer; and
// after an unseal neither the logs, the metrics, the audit files nor the
// process's memory hold the PIN or a share.
func TestSealedVaultDrill(t *testing.T) {
	v := newVault(t)
	// No garbage collection in custodyd: a copy of a secret that was
	// dropped without being zeroed stays where it was (nothing reuses the
	// memory), so the memory scans below see every copy ever made on the
	// Go heap instead of whichever ones a collection happened to spare.
	v.procEnv = []string{"GOGC=off"}
	v.start(t)
	v.ceremony(t)
	// The ceremony made the PIN (and split and checked it, and set it on
	// the token) in this process: the store, copied while it runs, tells
	// the officers' shares and so the PIN, and neither is left in its
	// memory, nor is the installer's PIN it replaced.
	rec := readRecord(t, v.snapshotStore(t))
	alice, bob, carol, mallory := v.loadOfficer(t, "alice"), v.loadOfficer(t, "bob"), v.loadOfficer(t, "carol"), v.loadOfficer(t, "mallory")
	pin := pinFromShares(t, rec, alice, bob)
	secrets := sealSecrets(t, "vault's", rec, pin, alice, bob, carol)
	scanProcessMemory(t, "after the ceremony", v.pid, withInstallerPIN(secrets, v.tok.PIN))
	v.stop(t, syscall.SIGTERM)

	v.start(t)
	sc := custodyv1.NewSealServiceClient(v.conn(t, "officer"))
	crypto := func() error {
		_, err := custodyv1.NewCryptoServiceClient(v.conn(t, "relay")).Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")})
		return err
	}

	// A relay is no officer.
	_, err := custodyv1.NewSealServiceClient(v.conn(t, "relay")).GetShare(tctx(t), &custodyv1.GetShareRequest{OfficerFingerprint: alice.fp})
	wantCode(t, err, codes.PermissionDenied, "relay fetches a share")
	// Mallory has an officer's certificate but her key holds no share, and
	// she cannot pass off a share as alice's.
	_, err = sc.GetShare(tctx(t), &custodyv1.GetShareRequest{OfficerFingerprint: mallory.fp})
	wantCode(t, err, codes.PermissionDenied, "mallory fetches a share")
	forged := v.submitAs(t, alice, nil)
	forged.OfficerFingerprint = mallory.fp
	_, err = sc.Unseal(tctx(t), forged)
	wantCode(t, err, codes.PermissionDenied, "non-officer submission")
	// Alice's share: accepted; the same submission again: replayed.
	good := v.submitAs(t, alice, nil)
	if st, err := sc.Unseal(tctx(t), good); err != nil || st.GetSharesAccepted() != 1 {
		t.Fatalf("alice: %v %v", st, err)
	}
	_, err = sc.Unseal(tctx(t), good)
	wantCode(t, err, codes.FailedPrecondition, "replayed submission")
	// Bob's share, corrupted: refused before any login is tried.
	_, err = sc.Unseal(tctx(t), v.submitAs(t, bob, func(s []byte) { s[len(s)-1] ^= 0x5a }))
	wantCode(t, err, codes.InvalidArgument, "corrupt share")
	// Still sealed with one share in.
	wantCode(t, crypto(), codes.Unavailable, "encrypt with one good share in")
	if code, body := v.get(t, "/readyz"); code != 503 || !strings.Contains(body, "1 accepted") {
		t.Fatalf("readyz: %d %q", code, body)
	}
	if _, body := v.get(t, "/metrics"); !strings.Contains(body, `custody_seal_submissions_total{outcome="replayed"} 1`) ||
		!strings.Contains(body, `custody_seal_state{state="sealed"} 1`) || !strings.Contains(body, "custody_seal_shares_accepted 1") {
		t.Fatalf("seal metrics:\n%s", grepLines(body, "custody_seal"))
	}
	// Carol, with the real CLI, completes the unseal.
	if inv := v.unseal(t, "carol"); inv.code != 0 || !strings.Contains(inv.stdout, "unsealed") {
		t.Fatalf("carol: %+v\n%s", inv, v.stderr)
	}
	if err := crypto(); err != nil {
		t.Fatalf("relay after unseal: %v", err)
	}
	// Neither the PIN the shares made nor a share is left in the memory of
	// the unsealed process (Go heap and stacks, C heap, the module's own).
	scanProcessMemory(t, "after the unseal", v.pid, secrets)

	// Every refusal is on the record, written while sealed.
	var outcomes []string
	for _, r := range auditRecords(t, filepath.Join(v.data, "audit")) {
		switch r["method"] {
		case "Unseal", "GetShare", "Unsealed":
			outcomes = append(outcomes, fmt.Sprintf("%s/%s/%s", r["method"], r["outcome"], r["code"]))
		}
	}
	for _, want := range []string{"GetShare/denied/PermissionDenied", "Unseal/denied/PermissionDenied", "Unseal/ok/OK",
		"Unseal/error/FailedPrecondition", "Unseal/error/InvalidArgument", "Unsealed/ok/OK"} {
		if !contains(outcomes, want) {
			t.Errorf("audit lacks %s; has %v", want, outcomes)
		}
	}

	// The token goes away and comes back: the vault recovers by itself
	// with the PIN it keeps masked in locked memory, no officer needed.
	moved := v.tok.TokenDir + ".away"
	if err := os.Rename(v.tok.TokenDir, moved); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "token gone", func() (bool, string) { err := crypto(); return status.Code(err) == codes.Unavailable, fmt.Sprint(err) })
	if err := os.Rename(moved, v.tok.TokenDir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "recovered after the token came back", func() (bool, string) { err := crypto(); return err == nil, fmt.Sprint(err) })

	// Nothing holds the PIN or a share: logs, metrics, audit, store, and
	// the memory of the running, unsealed process.
	_, metrics := v.get(t, "/metrics")
	scan := map[string][]byte{"metrics": []byte(metrics)}
	for i, l := range v.logs {
		scan[fmt.Sprintf("log of run %d", i+1)] = []byte(l.String())
	}
	filepath.Walk(v.dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			b, _ := os.ReadFile(path)
			scan[path] = b
		}
		return nil
	})
	for where, b := range scan {
		for what, s := range secrets {
			if bytes.Contains(b, s) {
				t.Errorf("%s holds %s", where, what)
			}
		}
	}
	// The re-login after the recovery used the kept PIN: still no copy.
	scanProcessMemory(t, "after the recovery", v.pid, secrets)

	// A crash (SIGKILL) and a restart: sealed again; officers unseal it.
	v.stop(t, syscall.SIGKILL)
	v.start(t)
	wantCode(t, crypto(), codes.Unavailable, "after a crash")
	for _, n := range []string{"alice", "bob"} {
		if inv := v.unseal(t, n); inv.code != 0 {
			t.Fatalf("%s after the crash: %+v\n%s", n, inv, v.stderr)
		}
	}
	if err := crypto(); err != nil {
		t.Fatalf("after the crash and unseal: %v", err)
	}

	// A second custodyd on the same token, with a copied store and its own
	// audit directory: sealed, and even when two officers are fooled into
	// unsealing it, it refuses to serve while the first holds the token.
	first := *v
	second := *v
	second.data = filepath.Join(v.dir, "data2")
	os.MkdirAll(filepath.Join(second.data, "audit"), 0o700)
	db, _ := os.ReadFile(filepath.Join(v.data, "custody.db"))
	os.WriteFile(filepath.Join(second.data, "custody.db"), db, 0o600)
	second.cfgFile = filepath.Join(v.dir, "custodyd2.yaml")
	second.writeConfig(t, second.cfgFile, second.data)
	second.startWith(t, second.cfgFile)
	_, err = custodyv1.NewCryptoServiceClient(second.conn(t, "relay")).Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")})
	wantCode(t, err, codes.Unavailable, "second instance, sealed")
	if inv := second.unseal(t, "alice"); inv.code != 0 {
		t.Fatalf("alice on the second: %+v", inv)
	}
	inv := second.unseal(t, "bob")
	if inv.code == 0 || !strings.Contains(inv.stderr, "another custodyd holds this HSM token") || !strings.Contains(inv.stderr, "pid "+strconv.Itoa(first.pid)) {
		t.Fatalf("second instance unsealed: %+v", inv)
	}
	_, err = custodyv1.NewCryptoServiceClient(second.conn(t, "relay")).Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")})
	wantCode(t, err, codes.Unavailable, "second instance after the refused unseal")
	if st := second.sealStatus(t); st.GetState() != custodyv1.SealState_SEAL_STATE_SEALED || !strings.Contains(st.GetDetail(), "another custodyd") {
		t.Fatalf("second instance status: %v", st)
	}
	if err := crypto(); err != nil {
		t.Fatalf("the first instance stopped serving: %v", err)
	}
	second.stop(t, syscall.SIGTERM)
	// The second instance was never unsealed, yet its refusal is on its own
	// hash-chained record, written while it was sealed.
	var refused bool
	for _, r := range auditRecords(t, filepath.Join(second.data, "audit")) {
		if r["method"] == "Unsealed" && r["outcome"] == "error" && strings.Contains(fmt.Sprint(r["detail"]), "another custodyd") {
			refused = true
		}
	}
	if !refused {
		t.Error("the second instance's refused unseal is not in its audit log")
	}
	v.stop(t, syscall.SIGTERM)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// withInstallerPIN is secrets and the installer's PIN, which the ceremony
// retired.
func withInstallerPIN(secrets map[string][]byte, installer string) map[string][]byte {
	out := maps.Clone(secrets)
	out["the installer's PIN"] = []byte(installer)
	return out
}

// scanProcessMemory searches every readable mapping of process pid for
// the secrets, whole or any run of memscan.MinRun of their bytes, and
// fails on each copy found. custodyd makes itself non-dumpable, so only a
// process with CAP_SYS_PTRACE (root, as in CI) can read it: without it the
// read must be refused, which is the point of PR_SET_DUMPABLE=0.
func scanProcessMemory(t *testing.T, when string, pid int, secrets map[string][]byte) {
	t.Helper()
	r, err := memscan.Scan(pid, secrets)
	if errors.Is(err, memscan.ErrNotPermitted) && os.Geteuid() != 0 {
		t.Logf("memory scan %s: /proc/%d/mem refused to a non-root test (custodyd is not dumpable); run as root (CI does) to scan it", when, pid)
		return
	}
	if err != nil {
		t.Fatalf("memory scan %s: %v", when, err)
	}
	for _, f := range r.Findings {
		t.Errorf("%s, custodyd's memory holds %s", when, f)
	}
	if len(r.Skipped) > 0 {
		t.Errorf("memory scan %s: %d mappings could not be read: %v", when, len(r.Skipped), r.Skipped)
	}
	if len(r.Findings) == 0 {
		t.Logf("memory scan %s: %d mappings, %d MiB of custodyd's memory read; no PIN, no share", when, r.Mappings, r.Bytes>>20)
	}
}
