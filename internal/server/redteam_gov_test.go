package server_test

// Red team: a coerced officer (one officer key, the officer's certificate,
// the API the CLI uses) against governance, on a real custodyd (SoftHSM,
// bbolt, gRPC with mTLS on loopback).

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/testenv"
)

// proposeAs files payload in client's own name (its certificate's
// identity) with ttl and returns the proposal and the server's answer.
func (g *govEnv) proposeAs(t *testing.T, client string, pl quorum.Payload, ttl time.Duration) (quorum.Proposal, error) {
	t.Helper()
	p, err := quorum.NewProposal(pl, g.Cert[client].Identity, time.Now(), ttl)
	p.Vault = g.D.Gov.VaultID()
	if err != nil {
		t.Fatal(err)
	}
	canon, err := p.CanonicalBytes()
	if err != nil {
		t.Fatal(err)
	}
	_, err = g.gov(t, client).Propose(ctx(t), &custodyv1.ProposeRequest{CanonicalProposal: canon})
	return p, err
}

// bulkyGrant is a valid add-grant of about size bytes: a grant for the
// relay on key spare whose context match holds as many 1000-byte values as
// it takes.
func (g *govEnv) bulkyGrant(id string, size int) quorum.AddGrant {
	m := map[string]string{}
	for i := 0; size > 0; i++ {
		n := min(size, 1000)
		m[fmt.Sprintf("k%05d", i)] = strings.Repeat("v", n)
		size -= n + 20
	}
	return quorum.AddGrant{Grant: policy.Grant{ID: id, Identity: g.relay, Key: "spare", Operations: []policy.Op{policy.OpEncrypt},
		ContextMatch: m, AllowPlaintext: true}}
}

// TestOneProposerCannotFillGovernanceAndBlockApprovalsOrVetoes: all of
// governance (the ledger of proposals, grants, budgets, orders) is one store
// value of at most 1 MiB. Carol, coerced, files proposals as large and as
// many as custodyd takes, then approves each of her own, to fill it. The
// other officers must still be able to approve, veto and propose:
// otherwise one officer (or operator) could stop every future change —
// an unfreeze, a rotation, and the veto of a widening proposal waiting out
// its time-lock — for good. Every proposal and refusal is on the record.
func TestOneProposerCannotFillGovernanceAndBlockApprovalsOrVetoes(t *testing.T) {
	// Nothing here waits for the time-lock loop (the narrowing change runs
	// on its second approval), so it ticks at the production default
	// rather than every 50 ms over the large ledger.
	g := startGovEvery(t, time.Second)
	g.ceremony(t, 100)
	alice, bob, carol := g.officers[0], g.officers[1], g.officers[2]
	// The honest business in flight: a narrowing change with one approval,
	// and a widening one that carol (or anyone) must be able to veto.
	narrow := g.propose(t, quorum.RemoveGrant{GrantID: "relay2-msgs"}, time.Hour)
	if _, err := g.approve(t, "officer", alice, narrow); err != nil {
		t.Fatal(err)
	}
	widen := g.propose(t, quorum.AddGrant{Grant: policy.Grant{ID: "relay-spare", Identity: g.relay, Key: "spare",
		Operations: []policy.Op{policy.OpEncrypt}, AllowPlaintext: true}}, time.Hour)

	// Carol fills: proposals from 64 KiB down to 512 bytes, each size
	// until refused, then her approval of each of her own.
	var filed []quorum.Proposal
	refusals := map[codes.Code]int{}
	for size, n := 64<<10, 0; size >= 512; size /= 2 {
		for i := 0; i < 64; i++ {
			p, err := g.proposeAs(t, "officer", g.bulkyGrant(fmt.Sprintf("fill-%d", n), size), time.Hour)
			n++
			if err != nil {
				refusals[code(err)]++
				break
			}
			filed = append(filed, p)
		}
	}
	for _, p := range filed {
		if _, err := g.approve(t, "officer", carol, p); err != nil {
			refusals[code(err)]++
			break
		}
	}
	t.Logf("carol filed %d proposals; refusals by code %v", len(filed), refusals)
	if refusals[codes.Internal] > 0 {
		t.Fatalf("Internal answers while filling: %v", refusals)
	}

	// The others still govern.
	info, err := g.approve(t, "officer", bob, narrow)
	if err != nil {
		t.Fatalf("bob's approval after carol's filling: %v", err)
	}
	if info.GetState() != custodyv1.ProposalState_PROPOSAL_EXECUTED {
		g.waitState(t, narrow.ID, custodyv1.ProposalState_PROPOSAL_EXECUTED)
	}
	d, _ := widen.Digest()
	sig, err := quorum.SignVeto(alice.signer, d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.gov(t, "officer").Veto(ctx(t), &custodyv1.VetoRequest{Id: widen.ID, Officer: alice.name, Signature: sig}); err != nil {
		t.Fatalf("alice's veto after carol's filling: %v", err)
	}
	if _, err := g.proposeAs(t, "operator", quorum.RotateKey{Name: "msgs"}, time.Hour); err != nil {
		t.Fatalf("the operator's next proposal after carol's filling: %v", err)
	}
	// Carol's own share of governance is bounded, and said so.
	if len(filed) == 0 || refusals[codes.InvalidArgument]+refusals[codes.ResourceExhausted] == 0 {
		t.Errorf("carol's filling was never refused (filed %d, refusals %v)", len(filed), refusals)
	}

	// On the record: every proposal carol filed and every refusal.
	var proposed, refused int
	for _, r := range g.auditLog(t) {
		if r.Identity == g.Cert["officer"].Identity && r.Method == "Propose" {
			switch r.Outcome {
			case "ok":
				proposed++
			case "denied", "error":
				refused++
			}
		}
	}
	if proposed != len(filed) || refused != refusals[codes.InvalidArgument]+refusals[codes.ResourceExhausted] {
		t.Errorf("audit: %d proposals and %d refusals of carol's, want %d and %d", proposed, refused, len(filed),
			refusals[codes.InvalidArgument]+refusals[codes.ResourceExhausted])
	}
}

// auditLog reads every record custodyd has written so far.
func (g *govEnv) auditLog(t *testing.T) []audit.Record {
	t.Helper()
	var out []audit.Record
	if err := readRecords(g.Config.Audit.Dir, func(r audit.Record) { out = append(out, r) }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestADisclosureOrderLendsNoAuthorityBeyondTheReadsItNames: relay2 may
// encrypt and make data keys on msgs but never read them. A 2-of-3 order
// lets it read msgs under one conversation's context three times. It tries
// to borrow that authority for what the order does not name: another
// context, a rewrap, a listing of stored ids, key transport to a key of its
// choosing, a delete, and more items in one batch than the order has uses.
// Only three reads succeed; every one of them carries the case reference in
// the log, in the signed report and in the order's use count; the refused
// attempts spend nothing.
func TestADisclosureOrderLendsNoAuthorityBeyondTheReadsItNames(t *testing.T) {
	g := startGov(t, nil)
	g.ceremony(t, 1000)
	target := map[string]string{"tenant": "acme", "conversation": "7"}
	other := map[string]string{"tenant": "acme", "conversation": "8"}
	owner, investigator := g.Crypto(t, "relay"), g.Crypto(t, "relay2")
	ownerDK, invDK := dataKeys(t, g.Env, "relay"), dataKeys(t, g.Env, "relay2")
	ct, err := owner.Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m"), Context: target})
	if err != nil {
		t.Fatal(err)
	}
	ctOther, err := owner.Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m"), Context: other})
	if err != nil {
		t.Fatal(err)
	}
	gk, err := owner.GenerateDataKey(ctx(t), &custodyv1.GenerateDataKeyRequest{KeyName: "msgs", Context: target, WithoutPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ownerDK.StoreDataKey(ctx(t), generate("msgs", "conv-7", target)); err != nil {
		t.Fatal(err)
	}
	p := g.propose(t, quorum.DisclosureOrder{Order: policy.Order{CaseRef: "CASE-7", Key: "msgs", ContextMatch: target,
		Recipient: g.relay2, MaxUses: 3, NotAfter: time.Now().Add(time.Hour)}}, time.Hour)
	g.pass(t, p)
	g.waitState(t, p.ID, custodyv1.ProposalState_PROPOSAL_EXECUTED)
	used := func() uint32 {
		r, err := g.gov(t, "auditor").ListDisclosureOrders(ctx(t), &custodyv1.ListDisclosureOrdersRequest{IncludeEnded: true})
		if err != nil || len(r.GetOrders()) != 1 {
			t.Fatalf("orders: %v %v", r, err)
		}
		return r.GetOrders()[0].GetUsed()
	}
	_, rsaDER := relayRSA(t)

	// Borrowing attempts: each refused, none spends a use.
	attempts := []struct {
		what string
		call func() error
	}{
		{"decrypt under another conversation's context", func() error {
			_, err := investigator.Decrypt(ctx(t), &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: ctOther.GetCiphertext(), Context: other})
			return err
		}},
		{"rewrap of the conversation's data key", func() error {
			_, err := investigator.Rewrap(ctx(t), &custodyv1.RewrapRequest{KeyName: "msgs", WrappedKey: gk.GetWrappedKey(), Context: target})
			return err
		}},
		{"listing the stored ids", func() error {
			_, err := invDK.ListDataKeyIds(ctx(t), &custodyv1.ListDataKeyIdsRequest{KeyName: "msgs"})
			return err
		}},
		{"delete of the stored key", func() error {
			_, err := invDK.DeleteDataKey(ctx(t), &custodyv1.DeleteDataKeyRequest{KeyName: "msgs", Id: "conv-7", Context: target})
			return err
		}},
	}
	for _, a := range attempts {
		if err := a.call(); code(err) != codes.PermissionDenied {
			t.Errorf("%s under the order: %v, want PermissionDenied", a.what, err)
		}
	}
	// Key transport to a key of its choosing: the order pins no recipient,
	// so no recipient is allowed (the use is spent by the attempt: an order
	// use is recorded before the operation runs).
	_, err = investigator.Unwrap(ctx(t), &custodyv1.UnwrapRequest{KeyName: "msgs", WrappedKey: gk.GetWrappedKey(), Context: target, RecipientPublicKey: rsaDER})
	wantCode(t, err, codes.PermissionDenied, "key transport to the investigator's own key")
	if n := used(); n != 1 {
		t.Fatalf("order uses after the borrowing attempts: %d, want 1 (the transport attempt)", n)
	}
	// A batch of five reads on two uses left: two are served, three refused.
	dec := &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: ct.GetCiphertext(), Context: target}
	r, err := investigator.BatchDecrypt(ctx(t), &custodyv1.BatchDecryptRequest{Items: []*custodyv1.DecryptRequest{dec, dec, dec, dec, dec}})
	if err != nil {
		t.Fatal(err)
	}
	var ok, refused int
	for _, x := range r.GetResults() {
		if x.GetError() == nil {
			ok++
		} else if codes.Code(x.GetError().GetCode()) == codes.PermissionDenied {
			refused++
		}
	}
	if ok != 2 || refused != 3 || used() != 3 {
		t.Fatalf("batch of 5 on 2 uses: %d served, %d refused, order used %d", ok, refused, used())
	}
	_, err = invDK.FetchDataKey(ctx(t), &custodyv1.FetchDataKeyRequest{KeyName: "msgs", Id: "conv-7", Context: target})
	wantCode(t, err, codes.PermissionDenied, "a fetch after the order is spent")
	if _, err := ownerDK.FetchDataKey(ctx(t), &custodyv1.FetchDataKeyRequest{KeyName: "msgs", Id: "conv-7", Context: target}); err != nil {
		t.Fatalf("the owner's stored key after the investigator's attempts: %v", err)
	}

	// The evidence: the signed report counts the two reads under the case
	// (the transport attempt spent a use but returned nothing).
	resp, err := custodyv1.NewAuditServiceClient(g.Dial(t, "auditor")).Report(ctx(t), &custodyv1.ReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var rep audit.TransparencyReport
	if err := json.Unmarshal(resp.GetJson(), &rep); err != nil {
		t.Fatal(err)
	}
	var cases uint64
	for _, c := range rep.Cases {
		if c.CaseRef == "CASE-7" {
			cases = c.Uses
		}
	}
	var inv audit.UseCount
	for _, id := range rep.Identities {
		if id.Name == g.relay2 {
			inv = id
		}
	}
	if cases != 2 || inv.Disclosures != 2 || inv.Operations != 2 {
		t.Fatalf("report: case CASE-7 %d uses, investigator %+v; want 2 reads under the case", cases, inv)
	}
}

// startGovEvery is startGov with the governance loop ticking every interval.
func startGovEvery(t *testing.T, interval time.Duration) *govEnv {
	t.Helper()
	e := testenv.Start(t, testenv.Settings{
		ExtraClients: []string{"relay2"},
		Mutate: func(e *testenv.Env, c *config.Config) {
			c.Identities = append(c.Identities, config.IdentityConfig{Name: "dev-relay2", Role: config.Role("relay"), URI: e.Cert["relay2"].Identity})
			c.Governance.TimeLock = govTimeLock
			c.Governance.ProposalTTL = time.Hour
		},
		Daemon: daemon.Options{GovernanceInterval: interval},
	})
	return &govEnv{Env: e, officers: newOfficers(t, "alice", "bob", "carol"), relay: e.Cert["relay"].Identity, relay2: e.Cert["relay2"].Identity}
}
