package quorum

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/policy"
)

// goldenProposal is fixed in every field, so its canonical bytes and digest
// must never change: approvals already signed depend on them.
func goldenProposal() Proposal {
	return Proposal{
		ID:   "p-golden",
		Kind: KindAddGrant,
		Payload: AddGrant{Grant: policy.Grant{
			ID: "g-<1>", Identity: "spiffe://corp/relay-a", Key: "messages",
			Operations:    []policy.Op{policy.OpUnwrap, policy.OpDataKey},
			ContextMatch:  map[string]string{"zone": "eu", "tenant": "acme&co", "app": "chat"},
			RecipientKeys: [][]byte{bytes.Repeat([]byte{0xab}, 32)},
		}},
		Proposer: "spiffe://corp/operator",
		Created:  time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC),
		Expires:  time.Date(2026, 3, 8, 9, 0, 0, 500, time.UTC),
		Nonce:    []byte("0123456789abcdef"),
	}
}

func TestCanonicalBytesMatchGolden(t *testing.T) {
	got, err := goldenProposal().CanonicalBytes()
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "proposal-v1.golden")
	if os.Getenv("UPDATE_GOLDEN") == "1" {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("canonical bytes changed:\n got %s\nwant %s", got, want)
	}
	d, _ := goldenProposal().Digest()
	const wantDigest = "f425c1c29a04d8c3a600167e7a7e1d1ecb36342f950a67cf7359c16c10796c78"
	if d.String() != wantDigest {
		t.Fatalf("digest = %s, want %s", d, wantDigest)
	}
}

func TestCanonicalBytesIgnoreTimeZoneAndMapOrder(t *testing.T) {
	a := goldenProposal()
	b := goldenProposal()
	zone := time.FixedZone("CET", 3600)
	b.Created = b.Created.In(zone)
	b.Expires = b.Expires.In(zone)
	g := b.Payload.(AddGrant)
	g.Grant.ContextMatch = map[string]string{"app": "chat", "tenant": "acme&co", "zone": "eu"}
	b.Payload = &g // a pointer payload encodes the same as a value
	ab, _ := a.CanonicalBytes()
	bb, err := b.CanonicalBytes()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ab, bb) {
		t.Fatalf("equal proposals encode differently:\n%s\n%s", ab, bb)
	}
}

func TestDigestChangesWithEveryField(t *testing.T) {
	base := digest(t, goldenProposal())
	mutations := map[string]func(*Proposal){
		"id":       func(p *Proposal) { p.ID = "p-other" },
		"proposer": func(p *Proposal) { p.Proposer = "someone" },
		"created":  func(p *Proposal) { p.Created = p.Created.Add(time.Nanosecond) },
		"expires":  func(p *Proposal) { p.Expires = p.Expires.Add(time.Nanosecond) },
		"nonce":    func(p *Proposal) { p.Nonce = []byte("0123456789abcdeF") },
		"payload": func(p *Proposal) {
			g := p.Payload.(AddGrant)
			g.Grant.AllowPlaintext = true
			p.Payload = g
		},
	}
	for name, m := range mutations {
		p := goldenProposal()
		m(&p)
		if digest(t, p) == base {
			t.Errorf("changing %s left the digest unchanged", name)
		}
	}
}

func TestParseCanonicalRoundTripsEveryKind(t *testing.T) {
	_, edPub, _ := ed25519.GenerateKey(rand.Reader)
	off, err := NewOfficer("dave", edPub.Public())
	if err != nil {
		t.Fatal(err)
	}
	payloads := []Payload{
		CreateKey{Name: "messages", Algorithm: "aes-256-gcm"},
		DestroyKey{Name: "messages", Version: 0},
		RotateKey{Name: "messages"},
		EnableVersion{Name: "messages", Version: 2},
		DisableVersion{Name: "messages", Version: 1},
		grantPayload(),
		RemoveGrant{GrantID: "g-1"},
		SetBudget{Identity: "spiffe://corp/relay-a", Key: "messages", Budget: policy.Budget{Rate: 0.5, Burst: 10, Volume: 1 << 60, Window: time.Hour}},
		Unfreeze{Identity: "spiffe://corp/relay-a", Key: "messages"},
		AddOfficer{Officer: off},
		RemoveOfficer{Name: "dave"},
		SetThreshold{Threshold: 3},
		DisclosureOrder{Order: policy.Order{CaseRef: "c", Key: "messages", ContextMatch: map[string]string{"conversation": "x"},
			Recipient: "r", MaxUses: 1, NotAfter: time.Date(2026, 4, 1, 0, 0, 0, 0, time.FixedZone("X", 7200))}},
		RekeySeal{Reason: "officer dave added", ShareKeys: []OfficerShareKey{{Officer: "dave", PublicKey: p256DER(t)}}},
	}
	for _, pl := range payloads {
		t.Run(string(pl.Kind()), func(t *testing.T) {
			p := proposal(t, pl)
			b, err := p.CanonicalBytes()
			if err != nil {
				t.Fatal(err)
			}
			q, err := ParseCanonical(b)
			if err != nil {
				t.Fatalf("ParseCanonical: %v\n%s", err, b)
			}
			if digest(t, q) != digest(t, p) {
				t.Fatal("parsed proposal has another digest")
			}
			if q.Payload.Kind() != pl.Kind() {
				t.Fatalf("payload kind %s", q.Payload.Kind())
			}
		})
	}
}

func TestParseCanonicalRefusesNonCanonicalInput(t *testing.T) {
	good, _ := goldenProposal().CanonicalBytes()
	body := good[len(canonicalPrefix):]
	var generic map[string]any
	json.Unmarshal(body, &generic)
	indented, _ := json.MarshalIndent(generic, "", " ")
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"missing prefix", body, ErrNotCanonical},
		{"whitespace", append([]byte(canonicalPrefix), indented...), ErrNotCanonical},
		{"trailing newline", append(bytes.Clone(good), '\n'), ErrNotCanonical},
		{"unknown field", bytes.Replace(good, []byte(`{"created"`), []byte(`{"admin":true,"created"`), 1), ErrInvalidProposal},
		{"unknown kind", bytes.Replace(good, []byte(`"add-grant"`), []byte(`"export-keys"`), 1), ErrInvalidProposal},
		{"wildcard grant", bytes.Replace(good, []byte(`"key":"messages"`), []byte(`"key":"*"`), 1), ErrInvalidProposal},
		{"escaped html", bytes.Replace(good, []byte(`acme&co`), []byte(`acme\u0026co`), 1), ErrNotCanonical},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if bytes.Equal(tt.in, good) {
				t.Fatal("test input is the canonical proposal: mutation did not apply")
			}
			if _, err := ParseCanonical(tt.in); !errors.Is(err, tt.want) {
				t.Fatalf("ParseCanonical: %v, want %v", err, tt.want)
			}
		})
	}
}

func FuzzParseCanonical(f *testing.F) {
	good, _ := goldenProposal().CanonicalBytes()
	f.Add(good)
	f.Add([]byte(canonicalPrefix + `{}`))
	f.Add([]byte(canonicalPrefix + `{"created":"2026-03-01T09:00:00Z","expires":"2026-03-02T09:00:00Z","id":"p","kind":"rotate-key","nonce":"MDEyMzQ1Njc4OWFiY2RlZg==","payload":{"name":"k"},"proposer":"o"}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := ParseCanonical(in)
		if err != nil {
			return
		}
		// Accepted input is exactly the canonical form of a valid proposal.
		if err := p.Validate(); err != nil {
			t.Fatalf("accepted an invalid proposal: %v", err)
		}
		again, err := p.CanonicalBytes()
		if err != nil || !bytes.Equal(again, in) {
			t.Fatalf("accepted non-canonical bytes:\n%q\n%q", in, again)
		}
	})
}

func TestProposalValidateRefusals(t *testing.T) {
	tests := map[string]func(*Proposal){
		"no id":          func(p *Proposal) { p.ID = "" },
		"no proposer":    func(p *Proposal) { p.Proposer = "" },
		"short nonce":    func(p *Proposal) { p.Nonce = []byte("short") },
		"expires first":  func(p *Proposal) { p.Expires = p.Created },
		"kind mismatch":  func(p *Proposal) { p.Kind = KindRotateKey },
		"nil payload":    func(p *Proposal) { p.Payload = nil },
		"zero created":   func(p *Proposal) { p.Created = time.Time{} },
		"wildcard grant": func(p *Proposal) { g := grantPayload(); g.Grant.Key = "*"; p.Payload = g },
	}
	for name, m := range tests {
		t.Run(name, func(t *testing.T) {
			p := goldenProposal()
			m(&p)
			if _, err := p.CanonicalBytes(); !errors.Is(err, ErrInvalidProposal) {
				t.Fatalf("CanonicalBytes: %v, want ErrInvalidProposal", err)
			}
		})
	}
}

func TestWidening(t *testing.T) {
	cur := policy.Budget{Rate: 10, Burst: 10, Volume: 1000, Window: time.Hour}
	budgets := func(identity, key string) (policy.Budget, bool) {
		return cur, identity == "spiffe://corp/relay-a"
	}
	c := Current{Budget: budgets, Threshold: 3}
	tests := []struct {
		name string
		p    Payload
		cur  Current
		want bool
	}{
		{"new grant", grantPayload(), c, true},
		{"new officer", AddOfficer{}, c, true},
		{"disclosure order", DisclosureOrder{}, c, true},
		{"unfreeze", Unfreeze{}, c, true},
		{"re-enable version", EnableVersion{}, c, true},
		{"raised budget", SetBudget{Identity: "spiffe://corp/relay-a", Key: "m", Budget: policy.Budget{Rate: 20, Burst: 10, Volume: 1000, Window: time.Hour}}, c, true},
		{"lowered budget", SetBudget{Identity: "spiffe://corp/relay-a", Key: "m", Budget: policy.Budget{Rate: 5, Burst: 10, Volume: 1000, Window: time.Hour}}, c, false},
		{"first budget", SetBudget{Identity: "spiffe://corp/relay-b", Key: "m", Budget: cur}, c, true},
		{"budget, current unknown", SetBudget{Identity: "spiffe://corp/relay-a", Key: "m", Budget: cur}, Current{}, true},
		{"pointer payload", &SetBudget{Identity: "spiffe://corp/relay-a", Key: "m", Budget: cur}, c, false},
		{"lower threshold", SetThreshold{Threshold: 2}, c, true},
		{"higher threshold", SetThreshold{Threshold: 4}, c, false},
		{"threshold, current unknown", SetThreshold{Threshold: 4}, Current{}, true},
		{"remove grant", RemoveGrant{}, c, false},
		{"rotate", RotateKey{}, c, false},
		{"destroy", DestroyKey{}, c, false},
		{"rekey the seal", RekeySeal{}, c, false},
	}
	for _, tt := range tests {
		if got := Widening(tt.p, tt.cur); got != tt.want {
			t.Errorf("%s: Widening = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestOfficerSetValidate(t *testing.T) {
	set, _ := officerKeys(t)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	tests := []struct {
		name     string
		mutate   func(*OfficerSet)
		allowDev bool
		want     error
	}{
		{"valid 2 of 3", func(*OfficerSet) {}, false, nil},
		{"threshold 1", func(s *OfficerSet) { s.Threshold = 1 }, false, ErrInvalidOfficers},
		{"threshold 1 in dev", func(s *OfficerSet) { s.Threshold = 1 }, true, nil},
		{"threshold 0 in dev", func(s *OfficerSet) { s.Threshold = 0 }, true, ErrInvalidOfficers},
		{"threshold above N", func(s *OfficerSet) { s.Threshold = 4 }, false, ErrInvalidOfficers},
		{"duplicate name", func(s *OfficerSet) { s.Officers[1].Name = s.Officers[0].Name }, false, ErrInvalidOfficers},
		{"duplicate key", func(s *OfficerSet) { s.Officers[1].PublicKey = s.Officers[0].PublicKey }, false, ErrInvalidOfficers},
		{"empty name", func(s *OfficerSet) { s.Officers[1].Name = "" }, false, ErrInvalidOfficers},
		{"garbage key", func(s *OfficerSet) { s.Officers[1].PublicKey = []byte("nope") }, false, ErrInvalidOfficers},
		{"P-384 key", func(s *OfficerSet) {
			o, _ := NewOfficer("x", p384.Public())
			s.Officers[1].PublicKey = o.PublicKey
		}, false, ErrInvalidOfficers},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := set.clone()
			tt.mutate(&s)
			err := s.Validate(tt.allowDev)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Validate = %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := NewOfficer("x", p384.Public()); !errors.Is(err, ErrUnsupportedKey) {
		t.Fatalf("NewOfficer(P-384) = %v", err)
	}
	if _, err := SignApproval(p384, Digest{}); !errors.Is(err, ErrUnsupportedKey) {
		t.Fatalf("SignApproval(P-384) = %v", err)
	}
}

func TestOfficerFingerprintIsSHA256OfPKIX(t *testing.T) {
	o, err := NewOfficer("x", ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32)).Public())
	if err != nil {
		t.Fatal(err)
	}
	if fp := o.Fingerprint(); len(fp) != 64 || fp != (Officer{PublicKey: bytes.Clone(o.PublicKey)}).Fingerprint() {
		t.Fatalf("fingerprint %q", fp)
	}
	other, _ := NewOfficer("x", ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32)).Public())
	if other.Fingerprint() == o.Fingerprint() {
		t.Fatal("different keys share a fingerprint")
	}
}

func p256DER(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestRekeySealRefusesBadShareKeys(t *testing.T) {
	good := p256DER(t)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	edDER, _ := x509.MarshalPKIXPublicKey(ed.Public())
	for name, p := range map[string]RekeySeal{
		"empty officer":    {ShareKeys: []OfficerShareKey{{PublicKey: good}}},
		"officer twice":    {ShareKeys: []OfficerShareKey{{Officer: "a", PublicKey: good}, {Officer: "a", PublicKey: good}}},
		"ed25519 key":      {ShareKeys: []OfficerShareKey{{Officer: "a", PublicKey: edDER}}},
		"garbage key":      {ShareKeys: []OfficerShareKey{{Officer: "a", PublicKey: []byte("x")}}},
		"very long reason": {Reason: strings.Repeat("x", 257)},
	} {
		if err := p.Validate(); !errors.Is(err, ErrInvalidProposal) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := (RekeySeal{ShareKeys: []OfficerShareKey{{Officer: "a", PublicKey: good}}}).Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestTrustWithAnOfficerDroppedOrDemotedIsWider: a set-trust that takes an
// officer's certificate away, or gives it another role, reduces who can
// veto, as removing an officer does: it waits out the time-lock.
func TestTrustWithAnOfficerDroppedOrDemotedIsWider(t *testing.T) {
	cur := Trust{Roles: map[string]policy.Role{
		"spiffe://corp/alice": policy.RoleOfficer, "spiffe://corp/bob": policy.RoleOfficer,
		"spiffe://corp/ops": policy.RoleOperator, "spiffe://corp/relay": policy.RoleRelay,
	}, TimeLock: time.Hour}
	with := func(edit func(map[string]policy.Role)) Trust {
		n := cur.Clone()
		edit(n.Roles)
		return n
	}
	cases := []struct {
		name string
		next Trust
		want bool
	}{
		{"unchanged", cur.Clone(), false},
		{"a relay dropped", with(func(r map[string]policy.Role) { delete(r, "spiffe://corp/relay") }), false},
		{"an officer dropped", with(func(r map[string]policy.Role) { delete(r, "spiffe://corp/bob") }), true},
		{"an officer made an auditor", with(func(r map[string]policy.Role) { r["spiffe://corp/bob"] = policy.RoleAuditor }), true},
	}
	for _, c := range cases {
		if got := c.next.Wider(cur); got != c.want {
			t.Errorf("%s: Wider = %v, want %v", c.name, got, c.want)
		}
	}
}
