package main

// Red team: a coerced officer (one officer key, their own officer
// certificate, the CLI) against the unseal of a production vault: unseal
// alone, replay or forge shares, or keep the vault sealed for everyone.

import (
	"bytes"
	"path/filepath"
	"syscall"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/seal"
)

// shareTarget asks the sealed vault, over conn, for officer o's share and a
// one-time nonce (GetShare), as custodyctl unseal does first.
func shareTarget(t *testing.T, conn *grpc.ClientConn, o officer) *custodyv1.EncryptedShare {
	t.Helper()
	es, err := custodyv1.NewSealServiceClient(conn).GetShare(tctx(t), &custodyv1.GetShareRequest{OfficerFingerprint: o.fp})
	if err != nil {
		t.Fatalf("GetShare for %s: %v", o.name, err)
	}
	return es
}

// submission is officer o's share (decrypted with o's share key) submitted
// to target es under share index, signed by signWith.
func submission(t *testing.T, o officer, es *custodyv1.EncryptedShare, signWith officer, index uint32) *custodyv1.UnsealRequest {
	t.Helper()
	ref := seal.VaultRef{VaultID: es.GetVaultId(), Epoch: es.GetEpoch()}
	sh, err := seal.OpenShare(o.share, ref, seal.Envelope{Index: int(es.GetIndex()), ShareKey: es.GetSharePublicKeyDer(),
		Sealed: es.GetSealedShare(), Commitment: es.GetCommitment()})
	if err != nil {
		t.Fatal(err)
	}
	share := bytes.Clone(sh.Bytes())
	sh.Destroy()
	sub, err := seal.Submit(signWith.signer, share, seal.Target{Ref: ref, Index: int(index), EphemeralKey: es.GetUnsealPublicKeyDer(), Nonce: es.GetNonce()})
	if err != nil {
		t.Fatal(err)
	}
	return &custodyv1.UnsealRequest{VaultId: sub.Ref.VaultID, Epoch: sub.Ref.Epoch, Index: uint32(sub.Index), OfficerFingerprint: sub.OfficerFingerprint,
		UnsealKeyFingerprint: sub.EphemeralFingerprint, Nonce: sub.Nonce, SealedShare: sub.Sealed, Signature: sub.Signature}
}

// TestOneCoercedOfficerCanNeitherUnsealAloneNorKeepTheVaultSealed: carol
// is coerced. With her own officer certificate and key she cannot reach the
// threshold alone (a second submission of her share, her share under
// another's index, a submission passed off as alice's, a replay: all
// refused, all on the record); asking for share targets again and again
// (hundreds of GetShare calls) does not spend the one-time nonces that
// alice and bob were given, so they unseal the vault while she does; and
// alice's submission, captured and replayed after a restart, is refused.
func TestOneCoercedOfficerCanNeitherUnsealAloneNorKeepTheVaultSealed(t *testing.T) {
	v := newRedVault(t, 1000)
	v.start(t)
	v.ceremony(t)
	v.stop(t, syscall.SIGTERM)
	v.start(t)
	alice, bob, carol := v.loadOfficer(t, "alice"), v.loadOfficer(t, "bob"), v.loadOfficer(t, "carol")
	honest, coerced := v.conn(t, "officer"), v.conn(t, "officer-c")
	sc := custodyv1.NewSealServiceClient(coerced)
	sealed := func(what string) {
		t.Helper()
		if st := v.sealStatus(t); st.GetState() != custodyv1.SealState_SEAL_STATE_SEALED {
			t.Fatalf("%s: vault is %v", what, st.GetState())
		}
	}

	// Alone: her share once, then every way to count twice.
	es := shareTarget(t, coerced, carol)
	first := submission(t, carol, es, carol, es.GetIndex())
	if st, err := sc.Unseal(tctx(t), first); err != nil || st.GetSharesAccepted() != 1 {
		t.Fatalf("carol's own share: %v %v", st, err)
	}
	_, err := sc.Unseal(tctx(t), first)
	wantCode(t, err, codes.FailedPrecondition, "carol replays her accepted submission")
	es = shareTarget(t, coerced, carol)
	_, err = sc.Unseal(tctx(t), submission(t, carol, es, carol, es.GetIndex()))
	wantCode(t, err, codes.FailedPrecondition, "carol submits her share a second time")
	aliceIdx := shareTarget(t, coerced, alice).GetIndex()
	es = shareTarget(t, coerced, carol)
	_, err = sc.Unseal(tctx(t), submission(t, carol, es, carol, aliceIdx))
	wantCode(t, err, codes.FailedPrecondition, "carol's share under alice's index")
	es = shareTarget(t, coerced, carol)
	forged := submission(t, carol, es, carol, es.GetIndex())
	forged.OfficerFingerprint = alice.fp
	_, err = sc.Unseal(tctx(t), forged)
	wantCode(t, err, codes.PermissionDenied, "carol's share passed off as alice's")
	sealed("after carol's attempts alone")

	// Denial of unseal: alice and bob are given their targets; carol then
	// asks for targets (hers and theirs) 300 times before they submit.
	// (Her accepted share expires with no second one only after the
	// progress TTL; alice and bob do not need it.)
	ta, tb := shareTarget(t, honest, alice), shareTarget(t, honest, bob)
	for i := 0; i < 300; i++ {
		o := []officer{alice, bob, carol}[i%3]
		if _, err := sc.GetShare(tctx(t), &custodyv1.GetShareRequest{OfficerFingerprint: o.fp}); err != nil {
			t.Fatalf("carol's GetShare %d: %v", i, err)
		}
	}
	hc := custodyv1.NewSealServiceClient(honest)
	if _, err := hc.Unseal(tctx(t), submission(t, alice, ta, alice, ta.GetIndex())); err != nil {
		t.Fatalf("alice's share after carol's flood of GetShare: %v", err)
	}
	if v.sealStatus(t).GetState() == custodyv1.SealState_SEAL_STATE_SEALED {
		if _, err := hc.Unseal(tctx(t), submission(t, bob, tb, bob, tb.GetIndex())); err != nil {
			t.Fatalf("bob's share after carol's flood of GetShare: %v", err)
		}
	}
	if st := v.sealStatus(t); st.GetState() != custodyv1.SealState_SEAL_STATE_UNSEALED {
		t.Fatalf("after alice and bob: %v", st)
	}
	v.waitGateway(t)

	// Alice's accepted submission, captured on the wire by carol, replayed
	// after a restart: the new process has a new unseal key and no nonces.
	aliceSub := submission(t, alice, ta, alice, ta.GetIndex())
	v.stop(t, syscall.SIGTERM)
	v.start(t)
	_, err = custodyv1.NewSealServiceClient(v.conn(t, "officer-c")).Unseal(tctx(t), aliceSub)
	wantCode(t, err, codes.FailedPrecondition, "alice's submission from the last run, replayed")
	sealed("after the replay across a restart")
	for _, n := range []string{"alice", "bob"} {
		if inv := v.unseal(t, n); inv.code != 0 {
			t.Fatalf("unseal %s: %+v", n, inv)
		}
	}
	if inv := v.ctlAs(t, "auditor", nil, "audit", "pubkey", "--out", v.pubFile); inv.code != 0 {
		t.Fatalf("audit pubkey: %+v", inv)
	}
	v.evidence(t)

	// On the record, under carol's own identity: her flood and each refusal.
	var gets, refusals int
	for _, r := range recordsOf(t, filepath.Join(v.data, "audit"), "GetShare", "Unseal") {
		if r["identity"] != v.identity["officer-c"] {
			continue
		}
		switch {
		case r["method"] == "GetShare" && r["outcome"] == "ok":
			gets++
		case r["method"] == "Unseal" && r["outcome"] != "ok":
			refusals++
		}
	}
	if gets < 300 || refusals != 5 {
		t.Errorf("carol on the record: %d GetShare, %d refused submissions; want at least 300 and 5", gets, refusals)
	}
}
