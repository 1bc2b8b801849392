package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/seal"
)

// TestRekeyByQuorumThenOnlyTheNewSharesUnseal: a rekey-seal proposal
// approved by two officers makes a new PIN and new shares; the old PIN
// stays in force until all three new holders have proved their share
// decrypts; after the next restart the old shares are refused and the new
// ones unseal.
func TestRekeyByQuorumThenOnlyTheNewSharesUnseal(t *testing.T) {
	v := newVault(t)
	v.procEnv = []string{"GOGC=off"} // every dropped copy stays put for the memory scans (see the drill)
	v.start(t)
	v.ceremony(t)
	v.stop(t, syscall.SIGTERM)
	old := readRecord(t, filepath.Join(v.data, "custody.db"))
	alice, bob, carol := v.loadOfficer(t, "alice"), v.loadOfficer(t, "bob"), v.loadOfficer(t, "carol")
	oldPIN := pinFromShares(t, old, alice, bob)
	secrets := sealSecrets(t, "old", old, oldPIN, alice, bob, carol)

	v.start(t)
	for _, n := range []string{"alice", "carol"} {
		if inv := v.unseal(t, n); inv.code != 0 {
			t.Fatalf("unseal %s: %+v", n, inv)
		}
	}

	inv := v.ctlAs(t, "operator", nil, "--output", "json", "proposal", "create", "rekey-seal", "--reason", "annual rekey")
	if inv.code != 0 {
		t.Fatalf("propose: %+v", inv)
	}
	var info struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(inv.stdout), &info); err != nil || info.ID == "" {
		t.Fatalf("proposal output %q: %v", inv.stdout, err)
	}
	for _, n := range []string{"alice", "bob"} {
		if inv := v.ctlAs(t, "officer", nil, "proposal", "approve", info.ID, "--officer-key", v.officerKey(n), "--yes"); inv.code != 0 {
			t.Fatalf("approve by %s: %+v", n, inv)
		}
	}
	waitFor(t, "rekey pending", func() (bool, string) {
		st := v.sealStatus(t)
		return st.GetRekey() != nil && len(st.GetRekey().GetWaiting()) == 3, st.String()
	})

	// Someone who is not a new holder cannot confirm.
	_, err := custodyv1.NewSealServiceClient(v.conn(t, "officer")).GetRekeyShare(tctx(t),
		&custodyv1.GetShareRequest{OfficerFingerprint: v.loadOfficer(t, "mallory").fp})
	wantCode(t, err, codes.PermissionDenied, "mallory fetches a new share")
	for i, n := range officerNames {
		if v.pkcs11Login(t, oldPIN) != true {
			t.Fatalf("the old PIN was retired before every new holder confirmed (%d of 3)", i)
		}
		inv := v.ctlAs(t, "officer", nil, "seal", "confirm-rekey", "--officer-key", v.officerKey(n))
		if inv.code != 0 {
			t.Fatalf("%s confirms: %+v\n%s", n, inv, v.stderr)
		}
	}
	st := v.sealStatus(t)
	if st.GetRekey() != nil || st.GetEpoch() != 2 {
		t.Fatalf("after every confirmation: %v", st)
	}
	if v.pkcs11Login(t, oldPIN) {
		t.Fatal("the old PIN still logs in after the rekey")
	}
	// The rekey made the new PIN, split it, checked the split and set it
	// on the token in this process; once it is done, neither PIN nor any
	// old or new share is left in its memory (the module keeps the new PIN
	// masked only).
	rec := readRecord(t, v.snapshotStore(t))
	newPIN := pinFromShares(t, rec, bob, carol)
	maps.Copy(secrets, sealSecrets(t, "new", rec, newPIN, alice, bob, carol))
	scanProcessMemory(t, "after the rekey", v.pid, secrets)
	v.stop(t, syscall.SIGTERM)
	if rec.Epoch != 2 || !v.pkcs11Login(t, newPIN) {
		t.Fatalf("new record epoch %d, or its PIN does not log in", rec.Epoch)
	}

	// Restart: alice's old share is refused, under its own epoch or passed
	// off as a new one; the new shares unseal.
	v.start(t)
	sc := custodyv1.NewSealServiceClient(v.conn(t, "officer"))
	env, _ := old.Holder(alice.fp)
	oldShare, err := seal.OpenShare(alice.share, old.Ref(), env)
	if err != nil {
		t.Fatal(err)
	}
	for _, epoch := range []uint64{1, 2} {
		es, err := sc.GetShare(tctx(t), &custodyv1.GetShareRequest{OfficerFingerprint: alice.fp})
		if err != nil {
			t.Fatal(err)
		}
		sub, err := seal.Submit(alice.signer, oldShare.Bytes(), seal.Target{Ref: seal.VaultRef{VaultID: es.GetVaultId(), Epoch: epoch},
			Index: int(es.GetIndex()), EphemeralKey: es.GetUnsealPublicKeyDer(), Nonce: es.GetNonce()})
		if err != nil {
			t.Fatal(err)
		}
		_, err = sc.Unseal(tctx(t), &custodyv1.UnsealRequest{VaultId: sub.Ref.VaultID, Epoch: sub.Ref.Epoch, Index: uint32(sub.Index),
			OfficerFingerprint: sub.OfficerFingerprint, UnsealKeyFingerprint: sub.EphemeralFingerprint, Nonce: sub.Nonce,
			SealedShare: sub.Sealed, Signature: sub.Signature})
		want := map[uint64]codes.Code{1: codes.FailedPrecondition, 2: codes.InvalidArgument}[epoch]
		wantCode(t, err, want, fmt.Sprintf("alice's old share as epoch %d", epoch))
	}
	oldShare.Destroy()
	if st := v.sealStatus(t); st.GetSharesAccepted() != 0 || st.GetEpoch() != 2 {
		t.Fatalf("after the old shares: %v", st)
	}
	for _, n := range []string{"alice", "bob"} {
		if inv := v.unseal(t, n); inv.code != 0 {
			t.Fatalf("new share of %s: %+v\n%s", n, inv, v.stderr)
		}
	}
	if st := v.sealStatus(t); st.GetState() != custodyv1.SealState_SEAL_STATE_UNSEALED {
		t.Fatalf("not unsealed by the new shares: %v", st)
	}
	scanProcessMemory(t, "after the unseal with the new shares", v.pid, secrets)
	var rekeyed bool
	for _, r := range auditRecords(t, filepath.Join(v.data, "audit")) {
		if r["method"] == "Rekeyed" && strings.Contains(r["detail"].(string), "epoch 2") {
			rekeyed = true
		}
	}
	if !rekeyed {
		t.Error("the rekey is not on the audit record")
	}
	v.stop(t, syscall.SIGTERM)
}
