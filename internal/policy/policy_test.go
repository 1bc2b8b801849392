package policy

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"testing"
)

const (
	relayA  = "spiffe://corp/relay-a"
	relayB  = "spiffe://corp/relay-b"
	opID    = "spiffe://corp/operator"
	offID   = "spiffe://corp/officer-1"
	audID   = "spiffe://corp/auditor"
	keyMsgs = "messages"
)

func recipientDigest(s string) []byte {
	d := sha256.Sum256([]byte(s))
	return d[:]
}

func testSpec() Spec {
	return Spec{
		Identities: []Identity{
			{ID: relayA, Roles: []Role{RoleRelay}},
			{ID: relayB, Roles: []Role{RoleRelay}},
			{ID: opID, Roles: []Role{RoleOperator}},
			{ID: offID, Roles: []Role{RoleOfficer}},
			{ID: audID, Roles: []Role{RoleAuditor}},
		},
		Grants: []Grant{
			{
				ID: "g-a-tenant", Identity: relayA, Key: keyMsgs,
				Operations:    []Op{OpDataKey, OpUnwrap, OpEncrypt, OpDecrypt},
				ContextMatch:  map[string]string{"tenant": "acme"},
				RecipientKeys: [][]byte{recipientDigest("relay-a-spki")},
			},
			{ID: "g-a-sign", Identity: relayA, Key: "signing", Operations: []Op{OpSign, OpPublicKey}, AllowPlaintext: false},
			{ID: "g-b", Identity: relayB, Key: keyMsgs, Operations: []Op{OpEncrypt}, AllowPlaintext: true},
		},
		Frozen: []Subject{{Identity: relayB, Key: "signing"}},
	}
}

func mustPolicy(t testing.TB, s Spec) *Policy {
	t.Helper()
	p, err := New(s)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

func TestAuthorizeAllowsGrantedOperationWithMatchingContext(t *testing.T) {
	p := mustPolicy(t, testSpec())
	d, err := p.Authorize(relayA, RoleRelay, OpUnwrap, keyMsgs, map[string]string{"tenant": "acme", "conv": "42"})
	if err != nil {
		t.Fatalf("Authorize: %v", err)
	}
	if d.GrantID != "g-a-tenant" || d.Key != keyMsgs || d.Op != OpUnwrap || d.AllowPlaintext {
		t.Fatalf("decision = %+v", d)
	}
	if !d.RecipientAllowed(recipientDigest("relay-a-spki")) {
		t.Error("listed recipient refused")
	}
	if d.RecipientAllowed(recipientDigest("someone-else")) {
		t.Error("unlisted recipient allowed")
	}
}

func TestAuthorizeRefusals(t *testing.T) {
	p := mustPolicy(t, testSpec())
	acme := map[string]string{"tenant": "acme"}
	tests := []struct {
		name     string
		identity string
		role     Role
		op       Op
		key      string
		ctx      map[string]string
		want     error
	}{
		{"unknown op", relayA, RoleRelay, "export", keyMsgs, acme, ErrUnknownOp},
		{"unknown identity", "spiffe://corp/stranger", RoleRelay, OpDecrypt, keyMsgs, acme, ErrNoRole},
		{"role not held", relayA, RoleOfficer, OpApprove, "", nil, ErrNoRole},
		{"unknown role", relayA, "root", OpDecrypt, keyMsgs, acme, ErrNoRole},
		{"operator cannot decrypt", opID, RoleOperator, OpDecrypt, keyMsgs, acme, ErrNotGranted},
		{"officer cannot decrypt", offID, RoleOfficer, OpDecrypt, keyMsgs, acme, ErrNotGranted},
		{"operator cannot approve", opID, RoleOperator, OpApprove, "", nil, ErrNotGranted},
		{"relay cannot propose", relayA, RoleRelay, OpPropose, "", nil, ErrNotGranted},
		{"no grant on other key", relayA, RoleRelay, OpDecrypt, "payroll", acme, ErrNotGranted},
		{"op not in grant", relayA, RoleRelay, OpRewrap, keyMsgs, acme, ErrNotGranted},
		{"other identity's grant", relayB, RoleRelay, OpDecrypt, keyMsgs, acme, ErrNotGranted},
		{"context missing", relayA, RoleRelay, OpDecrypt, keyMsgs, nil, ErrContextMismatch},
		{"context other value", relayA, RoleRelay, OpDecrypt, keyMsgs, map[string]string{"tenant": "evil"}, ErrContextMismatch},
		{"frozen", relayB, RoleRelay, OpEncrypt, "signing", nil, ErrFrozen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := p.Authorize(tt.identity, tt.role, tt.op, tt.key, tt.ctx)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if d.Identity != "" || d.GrantID != "" || d.recipients != nil {
				t.Errorf("denial returned a non-zero decision %+v", d)
			}
		})
	}
}

func TestAuthorizeAdministrativeOpsFollowRoles(t *testing.T) {
	p := mustPolicy(t, testSpec())
	allowed := []struct {
		id   string
		role Role
		op   Op
	}{
		{offID, RoleOfficer, OpApprove},
		{offID, RoleOfficer, OpVeto},
		{opID, RoleOperator, OpPropose},
		{audID, RoleAuditor, OpAuditRead},
		{relayA, RoleRelay, OpStatus},
	}
	for _, a := range allowed {
		if _, err := p.Authorize(a.id, a.role, a.op, "", nil); err != nil {
			t.Errorf("%s as %s %s: %v", a.id, a.role, a.op, err)
		}
	}
	if _, err := p.Authorize(audID, RoleAuditor, OpPropose, "", nil); !errors.Is(err, ErrNotGranted) {
		t.Errorf("auditor propose: err = %v, want ErrNotGranted", err)
	}
}

func TestAuthorizeChoosesAnyMatchingGrant(t *testing.T) {
	s := testSpec()
	s.Grants = append(s.Grants, Grant{ID: "g-a-globex", Identity: relayA, Key: keyMsgs, Operations: []Op{OpDecrypt}, ContextMatch: map[string]string{"tenant": "globex"}})
	p := mustPolicy(t, s)
	d, err := p.Authorize(relayA, RoleRelay, OpDecrypt, keyMsgs, map[string]string{"tenant": "globex"})
	if err != nil || d.GrantID != "g-a-globex" {
		t.Fatalf("decision %+v, err %v", d, err)
	}
}

func TestNewRefusesInvalidSpec(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Spec)
	}{
		{"wildcard key", func(s *Spec) { s.Grants[0].Key = "*" }},
		{"pattern key", func(s *Spec) { s.Grants[0].Key = "msg*" }},
		{"empty key", func(s *Spec) { s.Grants[0].Key = "" }},
		{"admin op in grant", func(s *Spec) { s.Grants[0].Operations = append(s.Grants[0].Operations, OpApprove) }},
		{"unknown op in grant", func(s *Spec) { s.Grants[0].Operations = []Op{"export"} }},
		{"no ops", func(s *Spec) { s.Grants[0].Operations = nil }},
		{"grant to operator", func(s *Spec) { s.Grants[0].Identity = opID }},
		{"grant to unknown identity", func(s *Spec) { s.Grants[0].Identity = "spiffe://corp/x" }},
		{"duplicate grant id", func(s *Spec) { s.Grants[1].ID = s.Grants[0].ID }},
		{"empty grant id", func(s *Spec) { s.Grants[1].ID = "" }},
		{"duplicate identity", func(s *Spec) { s.Identities[1].ID = s.Identities[0].ID }},
		{"unknown role", func(s *Spec) { s.Identities[0].Roles = []Role{"root"} }},
		{"no roles", func(s *Spec) { s.Identities[0].Roles = nil }},
		{"short recipient digest", func(s *Spec) { s.Grants[0].RecipientKeys = [][]byte{{1, 2, 3}} }},
		{"empty context key", func(s *Spec) { s.Grants[0].ContextMatch = map[string]string{"": "x"} }},
		{"frozen without key", func(s *Spec) { s.Frozen = []Subject{{Identity: relayA}} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := testSpec()
			tt.mutate(&s)
			if _, err := New(s); !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("New: err = %v, want ErrInvalidSpec", err)
			}
		})
	}
}

func TestPolicyIsUnaffectedByLaterChangesToItsSpec(t *testing.T) {
	s := testSpec()
	p := mustPolicy(t, s)
	s.Grants[0].ContextMatch["tenant"] = "evil"
	s.Grants[0].Operations[0] = OpRewrap
	s.Grants[0].RecipientKeys[0][0] ^= 0xff
	d, err := p.Authorize(relayA, RoleRelay, OpDataKey, keyMsgs, map[string]string{"tenant": "acme"})
	if err != nil {
		t.Fatalf("Authorize after caller mutation: %v", err)
	}
	if !d.RecipientAllowed(recipientDigest("relay-a-spki")) {
		t.Error("recipient digest changed through caller's slice")
	}
	got := p.Spec()
	got.Grants[0].RecipientKeys[0][0] ^= 0xff
	if !bytes.Equal(p.Spec().Grants[0].RecipientKeys[0], recipientDigest("relay-a-spki")) {
		t.Error("Spec() exposes internal slices")
	}
}

func TestAuthorizeAllowedPathDoesNotAllocate(t *testing.T) {
	p := mustPolicy(t, testSpec())
	ctx := map[string]string{"tenant": "acme", "conv": "1"}
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := p.Authorize(relayA, RoleRelay, OpUnwrap, keyMsgs, ctx); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Authorize allocated %.1f times per call", allocs)
	}
}

func BenchmarkAuthorizeAllowed(b *testing.B) {
	s := testSpec()
	// A realistic number of other identities and grants in the maps.
	for i := range 1000 {
		id := fmt.Sprintf("spiffe://corp/relay-%04d", i)
		s.Identities = append(s.Identities, Identity{ID: id, Roles: []Role{RoleRelay}})
		s.Grants = append(s.Grants, Grant{ID: "bulk-" + id, Identity: id, Key: keyMsgs, Operations: []Op{OpDecrypt}})
	}
	p := mustPolicy(b, s)
	ctx := map[string]string{"tenant": "acme", "conv": "1"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Authorize(relayA, RoleRelay, OpUnwrap, keyMsgs, ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func TestKeyOpsAreExactlyTheGrantableOps(t *testing.T) {
	seen := map[Op]bool{}
	for _, op := range KeyOps {
		if !op.IsKeyOp() || seen[op] {
			t.Errorf("KeyOps has %q twice or not a key op", op)
		}
		seen[op] = true
	}
	if n := bitsSet(keyOps); n != len(KeyOps) {
		t.Errorf("KeyOps lists %d ops; the key-op bit set has %d", len(KeyOps), n)
	}
}

func bitsSet(s opSet) int {
	n := 0
	for ; s != 0; s &= s - 1 {
		n++
	}
	return n
}
func TestCheckUsableRefusesADataKeyGrantThatCanNeverReturnAKey(t *testing.T) {
	base := Grant{ID: "g-relay-1", Identity: "relay", Key: "relay-messages", Operations: []Op{OpDataKey, OpUnwrap},
		ContextMatch: map[string]string{"tenant": "acme"}}
	err := base.CheckUsable()
	if !errors.Is(err, ErrUnusableGrant) {
		t.Fatalf("CheckUsable = %v, want ErrUnusableGrant", err)
	}
	for _, want := range []string{"recipient_keys", "allow_plaintext", "g-relay-1", "datakey and unwrap", "relay-messages"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if base.Validate() != nil {
		t.Fatalf("the unusable grant must still be valid on its own (stored grants keep loading): %v", base.Validate())
	}
	unwrapOnly := base
	unwrapOnly.Operations = []Op{OpUnwrap}
	if !errors.Is(unwrapOnly.CheckUsable(), ErrUnusableGrant) {
		t.Errorf("unwrap alone without a way out was accepted")
	}
	for name, g := range map[string]Grant{
		"allow_plaintext": func() Grant { g := base; g.AllowPlaintext = true; return g }(),
		"recipient_keys":  func() Grant { g := base; g.RecipientKeys = [][]byte{make([]byte, 32)}; return g }(),
		"no data-key ops": func() Grant { g := base; g.Operations = []Op{OpEncrypt, OpDecrypt, OpRewrap}; return g }(),
	} {
		if err := g.CheckUsable(); err != nil {
			t.Errorf("%s: CheckUsable = %v, want nil", name, err)
		}
	}
}
