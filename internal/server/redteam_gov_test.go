package server_test

// Red team: a coerced officer (one officer key, the officer's certificate,
// the API the CLI uses) against governance, on a real custodyd (SoftHSM,
// bbolt, gRPC with mTLS on loopback).

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
)

// proposeAs files payload in client's own name (its certificate's
// identity) with ttl and returns the proposal and the server's answer.
func (g *govEnv) proposeAs(t *testing.T, client string, pl quorum.Payload, ttl time.Duration) (quorum.Proposal, error) {
	t.Helper()
	p, err := quorum.NewProposal(pl, g.Cert[client].Identity, time.Now(), ttl)
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
	g := startGov(t, nil)
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

	// Carol fills: proposals from 512 KiB down to 512 bytes, each size
	// until refused, then her approval of each of her own.
	var filed []quorum.Proposal
	refusals := map[codes.Code]int{}
	for size, n := 512<<10, 0; size >= 512; size /= 2 {
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
