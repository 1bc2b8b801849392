package governance

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
)

var (
	caA = strings.Repeat("a1", 32)
	caB = strings.Repeat("b2", 32)
)

// trustFixture is a production vault's governance after a 2-of-3 ceremony
// that fixed CA A, relay-a as relay, an officer identity, a 24h time-lock.
func trustFixture(t *testing.T) (*fixture, *Governance, map[string]ed25519.PrivateKey) {
	t.Helper()
	f := newFixture(t)
	f.o.Production, f.o.ClientCAs, f.o.TimeLock, f.o.ProposalTTL = true, []string{caA}, 24*time.Hour, 720*time.Hour
	f.o.Identities = append(f.o.Identities, policy.Identity{ID: officerActor.Identity, Roles: []policy.Role{policy.RoleOfficer}})
	g := f.open(t)
	req, privs := ceremonyRequest(t, "k1")
	tr, _, err := g.InitCeremony(context.Background(), operator, req)
	if err != nil {
		t.Fatal(err)
	}
	var doc quorum.Transcript
	if err := json.Unmarshal(tr.JSON, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Trust == nil || !doc.Trust.Production || doc.Trust.TimeLock != 24*time.Hour || len(doc.Trust.ClientCAs) != 1 ||
		doc.Trust.Roles["relay-a"] != policy.RoleRelay {
		t.Fatalf("the signed transcript does not fix the trust: %+v", doc.Trust)
	}
	if !strings.Contains(tr.Text, "production vault:  true") || !strings.Contains(tr.Text, caA) {
		t.Fatalf("the transcript text does not show the trust:\n%s", tr.Text)
	}
	return f, g, privs
}

var officerActor = Actor{Identity: "spiffe://test/officer", Role: policy.RoleOfficer}

// TestAConfigThatDisagreesWithTheCeremonyIsRefusedNamingEachDifference: after
// the ceremony, a configuration that appends a CA, shortens the time-lock,
// relaxes the freeze rule, adds an operator and turns the vault into a dev
// vault is refused at Open, with one error naming every difference (field,
// ceremony value, config value); the unchanged configuration opens.
func TestAConfigThatDisagreesWithTheCeremonyIsRefusedNamingEachDifference(t *testing.T) {
	f, _, _ := trustFixture(t)
	edited := f.o
	edited.ClientCAs = []string{caA, caB}
	edited.TimeLock = time.Hour
	edited.Freeze = policy.FreezeRule{Refusals: 10000, Within: time.Minute}
	edited.Identities = append(edited.Identities[:len(edited.Identities):len(edited.Identities)],
		policy.Identity{ID: "spiffe://evil/operator", Roles: []policy.Role{policy.RoleOperator}})
	edited.Production = false
	_, err := Open(context.Background(), edited)
	var tm *TrustMismatchError
	if !errors.As(err, &tm) || !errors.Is(err, ErrTrustMismatch) {
		t.Fatalf("open with an edited config: %v, want a TrustMismatchError", err)
	}
	for _, want := range []string{
		"dev: ceremony false (production true), config true (production false)",
		"tls.client_ca_file: ceremony does not trust CA sha256:" + caB + ", config adds it",
		"identities[spiffe://evil/operator].role: ceremony (none), config operator",
		"governance.time_lock: ceremony 24h0m0s, config 1h0m0s",
		"governance.freeze.refusals: ceremony 100, config 10000",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal does not name %q:\n%v", want, err)
		}
	}
	if len(tm.Differences) != 5 {
		t.Errorf("%d differences, want 5: %v", len(tm.Differences), tm.Differences)
	}
	// The raw-state check a sealed custodyd makes gives the same answer.
	kv, err := f.st.Get(context.Background(), StateKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckStoredTrust(kv.Value, ConfigTrust(edited)); !errors.Is(err, ErrTrustMismatch) {
		t.Fatalf("CheckStoredTrust: %v", err)
	}
	if err := CheckStoredTrust(kv.Value, ConfigTrust(f.o)); err != nil {
		t.Fatalf("CheckStoredTrust of the unchanged config: %v", err)
	}
	// Removing an identity is a difference too (a proposal narrows access).
	removed := f.o
	removed.Identities = removed.Identities[:1]
	if _, err := Open(context.Background(), removed); err == nil || !strings.Contains(err.Error(), "role: ceremony officer, config (none)") {
		t.Fatalf("open without the officer identity: %v", err)
	}
	f.open(t)
}

// TestSetTrustWideningWaitsOutTheTimeLockThenTakesEffect: a set-trust that
// adds a CA and a relay waits out the time-lock (and can be vetoed); once it
// executes it is in force at once (the new relay has its role, the new CA
// is trusted), the old config is now the one refused, and the config
// edited to match opens. A narrowing set-trust (one CA removed) needs no
// time-lock.
func TestSetTrustWideningWaitsOutTheTimeLockThenTakesEffect(t *testing.T) {
	f, g, privs := trustFixture(t)
	now := time.Now()
	clock := func() time.Time { return now }
	f.o.Now = clock
	g = f.open(t)
	if !g.Snapshot().TrustsCA([]string{caA}) || g.Snapshot().TrustsCA([]string{caB}) {
		t.Fatal("the ceremony's CA set is not the one in force")
	}
	wider := ConfigTrust(f.o).Trust.Clone()
	wider.ClientCAs = []string{caA, caB}
	wider.Roles["relay-b"] = policy.RoleRelay
	p := propose(t, g, quorum.SetTrust{Trust: wider})
	for _, n := range []string{"alice", "bob"} {
		approve(t, g, p, n, privs)
	}
	v, _ := g.Proposal(p.ID)
	if v.Status.State != quorum.StateTimeLocked {
		t.Fatalf("a widening set-trust is %s, want time-locked", v.Status.State)
	}
	if _, ok := g.Snapshot().Role("relay-b"); ok {
		t.Fatal("relay-b has a role before the time-lock ended")
	}
	now = now.Add(25 * time.Hour)
	if n, err := g.ExecuteReady(context.Background()); err != nil || n != 1 {
		t.Fatalf("execute after the time-lock: %d, %v", n, err)
	}
	if r, ok := g.Snapshot().Role("relay-b"); !ok || r != policy.RoleRelay {
		t.Fatal("relay-b has no role after the set-trust executed")
	}
	if !g.Snapshot().TrustsCA([]string{caB}) {
		t.Fatal("CA B is not trusted after the set-trust executed")
	}
	// The config as it was is now the one that disagrees.
	if _, err := Open(context.Background(), f.o); err == nil || !strings.Contains(err.Error(), "config lacks it") {
		t.Fatalf("the old config after the set-trust: %v", err)
	}
	f.o.ClientCAs = []string{caB, caA}
	f.o.Identities = append(f.o.Identities, policy.Identity{ID: "relay-b", Roles: []policy.Role{policy.RoleRelay}})
	g = f.open(t)

	// Narrowing (CA B removed again) executes on its second approval.
	narrow := wider.Clone()
	narrow.ClientCAs = []string{caA}
	p = propose(t, g, quorum.SetTrust{Trust: narrow})
	approve(t, g, p, "alice", privs)
	approve(t, g, p, "carol", privs)
	if v, _ := g.Proposal(p.ID); v.Status.State != quorum.StateExecuted || v.Failed {
		t.Fatalf("a narrowing set-trust: %+v", v.Status)
	}
	if g.Snapshot().TrustsCA([]string{caB}) {
		t.Fatal("CA B still trusted after it was removed")
	}
}

// TestSetTrustShorterTimeLockIsTimeLockedAndFloored: shortening the
// time-lock widens (it waits out the current lock), and a production vault
// refuses one under an hour, and one that leaves no officer.
func TestSetTrustShorterTimeLockIsTimeLockedAndFloored(t *testing.T) {
	f, g, privs := trustFixture(t)
	_ = f
	cur := ConfigTrust(f.o).Trust
	short := cur.Clone()
	short.TimeLock = 2 * time.Hour
	p := propose(t, g, quorum.SetTrust{Trust: short})
	approve(t, g, p, "alice", privs)
	approve(t, g, p, "bob", privs)
	if v, _ := g.Proposal(p.ID); v.Status.State != quorum.StateTimeLocked {
		t.Fatalf("a shorter time-lock is %s, want time-locked", v.Status.State)
	}
	tooShort := cur.Clone()
	tooShort.TimeLock = 2 * time.Second
	if _, err := tryPropose(g, quorum.SetTrust{Trust: tooShort}); !errors.Is(err, quorum.ErrInvalidProposal) || !strings.Contains(err.Error(), "least a production vault") {
		t.Fatalf("a 2s time-lock: %v", err)
	}
	noOfficer := cur.Clone()
	for id, r := range noOfficer.Roles {
		if r == policy.RoleOfficer {
			delete(noOfficer.Roles, id)
		}
	}
	if _, err := tryPropose(g, quorum.SetTrust{Trust: noOfficer}); !errors.Is(err, quorum.ErrInvalidProposal) || !strings.Contains(err.Error(), "officer role") {
		t.Fatalf("no officer left: %v", err)
	}
}

// TestAVaultWhoseCeremonyPredatesFixedTrustAdoptsTheConfigOnTheRecord: a
// ceremony state without a trust record (an upgraded vault) takes the
// configuration's trust at its first start, on the record, and from then
// on refuses a config that disagrees.
func TestAVaultWhoseCeremonyPredatesFixedTrustAdoptsTheConfigOnTheRecord(t *testing.T) {
	f, g, _ := trustFixture(t)
	g.mu.Lock()
	next := g.st.clone()
	next.Trust = nil
	if err := g.commit(context.Background(), g.ledgerState(), next); err != nil {
		t.Fatal(err)
	}
	g.mu.Unlock()
	g = f.open(t)
	if !strings.Contains(strings.Join(f.rec.actions(), ","), "trust-adopt") {
		t.Fatalf("adoption not on the record: %v", f.rec.actions())
	}
	if !g.Snapshot().TrustsCA([]string{caA}) || g.Snapshot().TrustsCA([]string{caB}) {
		t.Fatal("the adopted CA set is not in force")
	}
	edited := f.o
	edited.TimeLock = time.Hour
	if _, err := Open(context.Background(), edited); !errors.Is(err, ErrTrustMismatch) {
		t.Fatalf("after adoption an edited config opens: %v", err)
	}
}

func tryPropose(g *Governance, pl quorum.Payload) (quorum.Proposal, error) {
	p, err := quorum.NewProposal(pl, operator.Identity, time.Now(), 48*time.Hour)
	p.Vault = g.VaultID()
	if err != nil {
		return p, err
	}
	canon, _ := p.CanonicalBytes()
	_, err = g.Propose(context.Background(), operator, canon)
	return p, err
}

func propose(t *testing.T, g *Governance, pl quorum.Payload) quorum.Proposal {
	t.Helper()
	p, err := tryPropose(g, pl)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func approve(t *testing.T, g *Governance, p quorum.Proposal, name string, privs map[string]ed25519.PrivateKey) {
	t.Helper()
	d, _ := p.Digest()
	sig, _ := quorum.SignApproval(privs[name], d)
	if _, err := g.Approve(context.Background(), officerActor, p.ID, name, sig); err != nil {
		t.Fatalf("approve by %s: %v", name, err)
	}
}
