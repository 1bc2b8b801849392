package quorum

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/policy"
)

var t0 = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

// officerKeys returns three officers, two Ed25519 and one ECDSA P-256, so
// every flow exercises both signature schemes.
func officerKeys(t testing.TB) (OfficerSet, map[string]crypto.Signer) {
	t.Helper()
	signers := map[string]crypto.Signer{}
	var set OfficerSet
	for _, name := range []string{"alice", "bob"} {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		signers[name] = priv
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signers["carol"] = ec
	for _, name := range []string{"alice", "bob", "carol"} {
		o, err := NewOfficer(name, signers[name].Public())
		if err != nil {
			t.Fatal(err)
		}
		set.Officers = append(set.Officers, o)
	}
	set.Threshold = 2
	return set, signers
}

func newLedger(t testing.TB) (*Ledger, map[string]crypto.Signer) {
	t.Helper()
	set, signers := officerKeys(t)
	l, err := NewLedger(set, LedgerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l, signers
}

func proposal(t testing.TB, p Payload) Proposal {
	t.Helper()
	pr, err := NewProposal(p, "spiffe://corp/operator", t0, 7*24*time.Hour)
	if err != nil {
		t.Fatalf("NewProposal: %v", err)
	}
	return pr
}

func digest(t testing.TB, p Proposal) Digest {
	t.Helper()
	d, err := p.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func approval(t testing.TB, s crypto.Signer, p Proposal) []byte {
	t.Helper()
	sig, err := SignApproval(s, digest(t, p))
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func veto(t testing.TB, s crypto.Signer, p Proposal) []byte {
	t.Helper()
	sig, err := SignVeto(s, digest(t, p))
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func propose(t testing.TB, l *Ledger, p Proposal) {
	t.Helper()
	if err := l.Propose(p, Current{Threshold: 2}, t0); err != nil {
		t.Fatalf("Propose: %v", err)
	}
}

func grantPayload() AddGrant {
	return AddGrant{Grant: policy.Grant{
		ID: "g-1", Identity: "spiffe://corp/relay-a", Key: "messages",
		Operations: []policy.Op{policy.OpUnwrap}, ContextMatch: map[string]string{"tenant": "acme"},
	}}
}
