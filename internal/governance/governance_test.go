package governance

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/keys/hsmtoken"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
	"github.com/custodyhq/custody/internal/store/storetest"
)

// fixture is governance over a real SoftHSM token, a real bbolt store and a
// real key registry; the recorder keeps records in memory (the audit log's
// part is tested with the server) and can be made to fail.
type fixture struct {
	m    *hsm.Module
	st   *store.AuthStore
	keys *keys.Registry
	rec  *memRecorder
	tok  *markerToken
	o    Options
}

type memRecorder struct {
	mu   sync.Mutex
	evs  []Event
	fail bool
}

func (r *memRecorder) Record(_ context.Context, ev Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return errors.New("audit log unavailable")
	}
	r.evs = append(r.evs, ev)
	return nil
}

func (r *memRecorder) actions() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ev := range r.evs {
		out = append(out, ev.Action)
	}
	return out
}

// markerToken is the ceremony marker on the real token, as custodyd keeps
// it, with an injectable HSM failure.
type markerToken struct {
	m   *hsm.Module
	err error
}

const markerLabel = "custody:ceremony:v1"

func (t *markerToken) CeremonyMarked(ctx context.Context) (bool, error) {
	if t.err != nil {
		return false, t.err
	}
	_, err := t.m.FindByLabel(ctx, hsm.KindHMACSHA256, markerLabel)
	if errors.Is(err, hsm.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (t *markerToken) MarkCeremony(ctx context.Context) error {
	if ok, err := t.CeremonyMarked(ctx); ok || err != nil {
		return err
	}
	_, _, err := t.m.CreateKey(ctx, hsm.KindHMACSHA256, markerLabel)
	return err
}

func (t *markerToken) KeyAttributes(ctx context.Context, e *keys.Entry, v uint32) (quorum.TranscriptAttr, error) {
	o, err := e.Object(v)
	if err != nil {
		return quorum.TranscriptAttr{}, err
	}
	a, err := t.m.Attributes(ctx, hsmtoken.Key(o))
	return quorum.TranscriptAttr{Token: a.Token, Private: a.Private, Sensitive: a.Sensitive, AlwaysSensitive: a.AlwaysSensitive,
		Extractable: a.Extractable, NeverExtractable: a.NeverExtractable, Local: a.Local, Modifiable: a.Modifiable,
		Unverified: a.Unverified.Strings()}, err
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	m, _ := hsmtest.Open(t)
	raw, err := store.OpenBolt(filepath.Join(t.TempDir(), "store.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	st := storetest.Authenticated(t, raw, storetest.NewHMACSealer(t))
	reg, err := keys.OpenRegistry(context.Background(), st, hsmtoken.Token{M: m}, keys.RegistryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{m: m, st: st, keys: reg, rec: &memRecorder{}, tok: &markerToken{m: m}}
	f.o = Options{Store: st, Keys: reg, Token: f.tok, Signer: signer, Recorder: f.rec, QuorumRequired: true,
		Identities: []policy.Identity{{ID: "relay-a", Roles: []policy.Role{policy.RoleRelay}}},
		TimeLock:   time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return f
}

func (f *fixture) open(t *testing.T) *Governance {
	t.Helper()
	g, err := Open(context.Background(), f.o)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func ceremonyRequest(t *testing.T, keyNames ...string) (CeremonyRequest, map[string]ed25519.PrivateKey) {
	t.Helper()
	req := CeremonyRequest{Threshold: 2}
	privs := map[string]ed25519.PrivateKey{}
	for _, n := range []string{"alice", "bob", "carol"} {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		o, err := quorum.NewOfficer(n, priv.Public())
		if err != nil {
			t.Fatal(err)
		}
		req.Officers = append(req.Officers, o)
		privs[n] = priv
	}
	for _, k := range keyNames {
		req.Keys = append(req.Keys, CeremonyKey{Name: k, Purpose: keys.PurposeEncryptAES256GCM})
	}
	req.Grants = []policy.Grant{{ID: "g1", Identity: "relay-a", Key: keyNames[0], Operations: []policy.Op{policy.OpDecrypt}}}
	req.Budgets = []BudgetEntry{{Identity: "relay-a", Key: keyNames[0], Budget: policy.Budget{Rate: 1, Burst: 1, Volume: 10, Window: time.Hour}}}
	return req, privs
}

var operator = Actor{Identity: "spiffe://test/operator", Role: policy.RoleOperator}

// Hole 5: a ceremony that fails after its first key can be run again: the
// same ceremony resumes (the key it made is reused, not refused as
// "already exists"), and the vault ends governed with every key.
func TestACeremonyThatFailsMidwayResumes(t *testing.T) {
	f := newFixture(t)
	fault := errors.New("power cut after the first key")
	f.o.faultAfterKey = func(i int) error {
		if i == 0 {
			return fault
		}
		return nil
	}
	g := f.open(t)
	req, _ := ceremonyRequest(t, "k1", "k2")
	if _, _, err := g.InitCeremony(context.Background(), operator, req); !errors.Is(err, fault) {
		t.Fatalf("first run: %v, want the injected fault", err)
	}
	if _, err := f.keys.Get("k1"); err != nil {
		t.Fatalf("k1 after the fault: %v", err)
	}
	if g.Snapshot().Ceremony() {
		t.Fatal("a failed ceremony is recorded as done")
	}
	// A restart in between changes nothing: the plan is in the store.
	f.o.faultAfterKey = nil
	g = f.open(t)
	tr, _, err := g.InitCeremony(context.Background(), operator, req)
	if err != nil {
		t.Fatalf("rerun of the same ceremony: %v", err)
	}
	if !strings.Contains(string(tr.JSON), `"action": "resume"`) {
		t.Fatalf("transcript does not record the resumption:\n%s", tr.JSON)
	}
	for _, k := range []string{"k1", "k2"} {
		if _, err := f.keys.Get(k); err != nil {
			t.Fatalf("%s after the resumed ceremony: %v", k, err)
		}
	}
	if !g.Snapshot().Ceremony() || len(g.Snapshot().Grants()) != 1 {
		t.Fatal("the resumed ceremony did not install its grants")
	}
	if _, err := f.st.Get(context.Background(), planKey); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("plan left behind: %v", err)
	}
}

// Hole 5: a different ceremony after a failed one rolls the failed one's
// keys back first.
func TestADifferentCeremonyRollsBackAnUnfinishedOne(t *testing.T) {
	f := newFixture(t)
	fault := errors.New("fault")
	f.o.faultAfterKey = func(i int) error { return fault }
	g := f.open(t)
	req, _ := ceremonyRequest(t, "old1", "old2")
	if _, _, err := g.InitCeremony(context.Background(), operator, req); !errors.Is(err, fault) {
		t.Fatalf("first run: %v", err)
	}
	e, err := f.keys.Get("old1")
	if err != nil {
		t.Fatal(err)
	}
	o, _ := e.Object(1)
	hk := hsmtoken.Key(o)
	f.o.faultAfterKey = nil
	g = f.open(t)
	other, _ := ceremonyRequest(t, "new1")
	if _, _, err := g.InitCeremony(context.Background(), operator, other); err != nil {
		t.Fatalf("a different ceremony: %v", err)
	}
	if _, err := f.keys.Get("old1"); !errors.Is(err, keys.ErrKeyNotFound) {
		t.Fatalf("old1 after the rollback: %v", err)
	}
	if err := f.m.Find(context.Background(), hk); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("old1's hsm object after the rollback: %v", err)
	}
	acts := strings.Join(f.rec.actions(), ",")
	if !strings.Contains(acts, "ceremony-rollback") {
		t.Fatalf("the rollback is not on the record: %s", acts)
	}
}

// Hole 10: when the record of a change cannot be written, nothing changes.
func TestAChangeWhoseRecordFailsIsNotMade(t *testing.T) {
	f := newFixture(t)
	g := f.open(t)
	req, privs := ceremonyRequest(t, "k1")
	f.rec.fail = true
	if _, _, err := g.InitCeremony(context.Background(), operator, req); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("ceremony with the log down: %v, want ErrUnavailable", err)
	}
	if _, err := f.keys.Get("k1"); err == nil {
		t.Fatal("a key was created off the record")
	}
	f.rec.fail = false
	if _, _, err := g.InitCeremony(context.Background(), operator, req); err != nil {
		t.Fatal(err)
	}
	p, err := quorum.NewProposal(quorum.RotateKey{Name: "k1"}, operator.Identity, time.Now(), 2*time.Hour)
	p.Vault = g.VaultID()
	if err != nil {
		t.Fatal(err)
	}
	canon, _ := p.CanonicalBytes()
	if _, err := g.Propose(context.Background(), operator, canon); err != nil {
		t.Fatal(err)
	}
	d, _ := p.Digest()
	officer := Actor{Identity: "spiffe://test/officer", Role: policy.RoleOfficer}
	sigA, _ := quorum.SignApproval(privs["alice"], d)
	if _, err := g.Approve(context.Background(), officer, p.ID, "alice", sigA); err != nil {
		t.Fatal(err)
	}
	f.rec.fail = true
	sigB, _ := quorum.SignApproval(privs["bob"], d)
	if _, err := g.Approve(context.Background(), officer, p.ID, "bob", sigB); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("approval with the log down: %v, want ErrUnavailable", err)
	}
	v, err := g.Proposal(p.ID)
	if err != nil || len(v.Approvals) != 1 || v.Status.State != quorum.StatePending {
		t.Fatalf("after a refused approval: %+v, %v", v, err)
	}
	if e, _ := f.keys.Get("k1"); len(e.Key.Versions) != 1 {
		t.Fatal("the key was rotated off the record")
	}
	// Reopened from the store, the refused approval is not there either.
	f.rec.fail = false
	g2 := f.open(t)
	if v, _ := g2.Proposal(p.ID); len(v.Approvals) != 1 {
		t.Fatalf("the store holds %d approvals", len(v.Approvals))
	}
	if _, err := g2.Approve(context.Background(), officer, p.ID, "bob", sigB); err != nil {
		t.Fatalf("the same approval once the log is back: %v", err)
	}
	if e, _ := f.keys.Get("k1"); len(e.Key.Versions) != 2 {
		t.Fatal("the key was not rotated once the approval was on the record")
	}
}

// Hole 4: only a definite "no marker" means "no ceremony"; an HSM error
// stops start-up, even with no governance state in the store.
func TestAnUnreadableCeremonyMarkerStopsStartUp(t *testing.T) {
	f := newFixture(t)
	f.tok.err = errors.New("CKR_DEVICE_ERROR")
	if _, err := Open(context.Background(), f.o); !errors.Is(err, ErrMarker) {
		t.Fatalf("open with an unreadable marker: %v, want ErrMarker", err)
	}
	f.tok.err = nil
	g := f.open(t)
	req, _ := ceremonyRequest(t, "k1")
	if _, _, err := g.InitCeremony(context.Background(), operator, req); err != nil {
		t.Fatal(err)
	}
	// The state deleted from the store: the marker remembers.
	if err := store.Delete(context.Background(), f.st, stateKey); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), f.o); !errors.Is(err, ErrStateRolledBack) {
		t.Fatalf("open after the state was deleted: %v, want ErrStateRolledBack", err)
	}
}

// Hole 12: what officers read is escaped.
func TestSummaryEscapesWhatATerminalWouldHide(t *testing.T) {
	p := quorum.Proposal{Kind: quorum.KindUnfreeze, Payload: quorum.Unfreeze{Identity: "relay\x1b[8m hidden", Key: "k"}}
	if s := Summary(p); strings.ContainsRune(s, 0x1b) {
		t.Fatalf("summary carries a raw escape: %q", s)
	}
}

// A ceremony may give a key a shared budget beside its identities' own.
func TestCeremonyWithASharedAndPerIdentityBudgetsOnOneKey(t *testing.T) {
	f := newFixture(t)
	f.o.Identities = append(f.o.Identities, policy.Identity{ID: "relay-b", Roles: []policy.Role{policy.RoleRelay}})
	g := f.open(t)
	req, _ := ceremonyRequest(t, "k1")
	b := policy.Budget{Rate: 100, Burst: 10, Volume: 100, Window: time.Hour}
	req.Budgets = []BudgetEntry{{Identity: "relay-a", Key: "k1", Budget: b}, {Identity: "relay-b", Key: "k1", Budget: b},
		{Key: "k1", Budget: policy.Budget{Rate: 100, Burst: 3, Volume: 3, Window: time.Hour}}}
	if _, _, err := g.InitCeremony(context.Background(), operator, req); err != nil {
		t.Fatalf("ceremony: %v", err)
	}
	for i, id := range []string{"relay-a", "relay-b", "relay-a"} {
		if err := g.Spend(id, "k1", 1); err != nil {
			t.Fatalf("spend %d: %v", i, err)
		}
	}
	if err := g.Spend("relay-b", "k1", 1); err == nil {
		t.Fatal("the key's shared budget of 3 allowed a fourth")
	}
}

// Spend is durable before it returns: a process that dies without closing
// (SIGKILL) and is reopened on the same store has not refilled the budget.
func TestBudgetSpendSurvivesACrash(t *testing.T) {
	f := newFixture(t)
	g := f.open(t)
	req, _ := ceremonyRequest(t, "k1")
	req.Budgets = []BudgetEntry{{Identity: "relay-a", Key: "k1", Budget: policy.Budget{Rate: 1000, Burst: 20, Volume: 20, Window: time.Hour}}}
	if _, _, err := g.InitCeremony(context.Background(), operator, req); err != nil {
		t.Fatal(err)
	}
	served := 0
	for crash := 0; crash < 5; crash++ {
		for g.Spend("relay-a", "k1", 1) == nil {
			served++
			if served > 100 {
				t.Fatal("the budget never ran out")
			}
			if served%3 == 0 {
				break // crash mid-burst, holding part of a reservation
			}
		}
		g = f.open(t) // no Close: whatever was reserved and not used is lost
	}
	for g.Spend("relay-a", "k1", 1) == nil {
		served++
	}
	if served > 20 {
		t.Fatalf("%d served across 5 crashes on a volume of 20", served)
	}
}

// bulkyProposal is a valid proposal of about size canonical bytes in actor's
// name: a grant for relay-a on k1 whose context match carries the bulk.
func bulkyProposal(t *testing.T, g *Governance, actor Actor, size int, now time.Time) []byte {
	t.Helper()
	m := map[string]string{}
	for i := 0; size > 0; i++ {
		n := min(size, 1000)
		m[fmt.Sprintf("k%05d", i)] = strings.Repeat("v", n)
		size -= n + 20
	}
	p, err := quorum.NewProposal(quorum.AddGrant{Grant: policy.Grant{ID: fmt.Sprintf("g-%d", len(m)), Identity: "relay-a", Key: "k1",
		Operations: []policy.Op{policy.OpDecrypt}, ContextMatch: m}}, actor.Identity, now, time.Hour+time.Minute)
	p.Vault = g.VaultID()
	if err != nil {
		t.Fatal(err)
	}
	canon, err := p.CanonicalBytes()
	if err != nil {
		t.Fatal(err)
	}
	return canon
}

// TestProposalsCannotFillGovernanceAndExpiredOnesMakeRoom: a proposal
// larger than MaxProposalBytes is refused; a proposer holds at most
// MaxOpenProposals; several proposers together fill at most proposalSpace
// (ErrFull beyond), which leaves the rest of the state for approvals; and
// once proposals are long expired their records are forgotten to make room.
func TestProposalsCannotFillGovernanceAndExpiredOnesMakeRoom(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	f.o.Now = func() time.Time { return now }
	g := f.open(t)
	req, _ := ceremonyRequest(t, "k1")
	if _, _, err := g.InitCeremony(context.Background(), operator, req); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := g.Propose(ctx, operator, bulkyProposal(t, g, operator, MaxProposalBytes+1000, now)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("an oversized proposal: %v, want ErrInvalid", err)
	}
	var full error
	var first string
	for i := 0; i < 8 && full == nil; i++ {
		actor := Actor{Identity: fmt.Sprintf("spiffe://test/officer-%d", i), Role: policy.RoleOfficer}
		for j := 0; j <= MaxOpenProposals; j++ {
			v, err := g.Propose(ctx, actor, bulkyProposal(t, g, actor, MaxProposalBytes-1500, now))
			switch {
			case err == nil && j == MaxOpenProposals:
				t.Fatalf("%s filed %d proposals", actor.Identity, j+1)
			case err == nil:
				if first == "" {
					first = v.Proposal.ID
				}
				continue
			case !errors.Is(err, ErrFull):
				t.Fatalf("proposal %d of %s: %v", j, actor.Identity, err)
			case j < MaxOpenProposals:
				full = err // the space, not this proposer's allowance
			}
			break
		}
	}
	if full == nil {
		t.Fatal("proposers together were never refused")
	}
	kv, err := f.st.Get(ctx, stateKey)
	if err != nil || len(kv.Value) > proposalSpace {
		t.Fatalf("state is %d bytes (%v), more than the %d proposals may fill", len(kv.Value), err, proposalSpace)
	}
	// Long after they expired, their records make room for new ones.
	now = now.Add(2*time.Hour + proposalRetention)
	for j := 0; j < MaxOpenProposals; j++ {
		if _, err := g.Propose(ctx, operator, bulkyProposal(t, g, operator, MaxProposalBytes-1500, now)); err != nil {
			t.Fatalf("proposal %d once the others are long expired: %v", j, err)
		}
	}
	if _, err := g.Proposal(first); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the first, long expired proposal: %v, want it forgotten", err)
	}
}

// A proposal names the vault it is for: one made for another vault (or for
// none) is refused, so approvals given there never count here.
func TestAProposalForAnotherVaultIsRefused(t *testing.T) {
	f := newFixture(t)
	g := f.open(t)
	req, _ := ceremonyRequest(t, "k1")
	if _, _, err := g.InitCeremony(context.Background(), operator, req); err != nil {
		t.Fatal(err)
	}
	if len(g.VaultID()) != 64 {
		t.Fatalf("vault id %q", g.VaultID())
	}
	for _, vault := range []string{"", strings.Repeat("ab", 32)} {
		p, err := quorum.NewProposal(quorum.RotateKey{Name: "k1"}, operator.Identity, time.Now(), 2*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		p.Vault = vault
		canon, err := p.CanonicalBytes()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := g.Propose(context.Background(), operator, canon); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), g.VaultID()) {
			t.Fatalf("proposal for vault %q: %v, want ErrInvalid naming this vault", vault, err)
		}
	}
	p, err := quorum.NewProposal(quorum.RotateKey{Name: "k1"}, operator.Identity, time.Now(), 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p.Vault = "NOT-HEX"
	if _, err := p.CanonicalBytes(); !errors.Is(err, quorum.ErrInvalidProposal) {
		t.Fatalf("a malformed vault id: %v", err)
	}
}
