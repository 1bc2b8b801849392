package policy

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/custodyhq/custody/internal/names"
)

// Role is what an identity may act as. An identity may hold several roles.
type Role string

// Roles.
const (
	// RoleRelay uses keys: the only role for which key operations exist, and
	// then only through grants.
	RoleRelay Role = "relay"
	// RoleOperator runs the service and proposes changes; it cannot use keys
	// or approve.
	RoleOperator Role = "operator"
	// RoleOfficer approves and vetoes proposals.
	RoleOfficer Role = "officer"
	// RoleAuditor reads the audit log and governance state.
	RoleAuditor Role = "auditor"
)

// Op names an operation being authorised.
type Op string

// Key operations: each needs a grant naming the identity, the key and the op.
const (
	OpEncrypt   Op = "encrypt"
	OpDecrypt   Op = "decrypt"
	OpDataKey   Op = "datakey"
	OpUnwrap    Op = "unwrap"
	OpRewrap    Op = "rewrap"
	OpSign      Op = "sign"
	OpVerify    Op = "verify"
	OpMAC       Op = "mac"
	OpVerifyMAC Op = "verify-mac"
	OpPublicKey Op = "pubkey"
)

// KeyOps lists every grantable key operation, in a fixed order. It is the
// one list of operations: the config file, grants and the CLI read it.
var KeyOps = []Op{OpEncrypt, OpDecrypt, OpDataKey, OpUnwrap, OpRewrap, OpSign, OpVerify, OpPublicKey, OpMAC, OpVerifyMAC}

// Administrative operations: allowed by role alone; they never touch key
// material, so no grant is involved.
const (
	OpStatus         Op = "status"          // health and version
	OpKeyRead        Op = "key-read"        // key metadata: get, list
	OpKeyAdmin       Op = "key-admin"       // create, rotate, enable/disable, destroy keys
	OpPropose        Op = "propose"         // submit a governance proposal
	OpApprove        Op = "approve"         // approve a proposal
	OpVeto           Op = "veto"            // veto a proposal
	OpGovernanceRead Op = "governance-read" // list proposals, grants, budgets, officers
	OpAuditRead      Op = "audit-read"      // tail the audit log, read checkpoints
)

type opSet uint32

// opBit maps an op to its bit; a switch keeps Authorize allocation-free.
func opBit(op Op) opSet {
	switch op {
	case OpEncrypt:
		return 1 << 0
	case OpDecrypt:
		return 1 << 1
	case OpDataKey:
		return 1 << 2
	case OpUnwrap:
		return 1 << 3
	case OpRewrap:
		return 1 << 4
	case OpSign:
		return 1 << 5
	case OpVerify:
		return 1 << 6
	case OpMAC:
		return 1 << 7
	case OpVerifyMAC:
		return 1 << 8
	case OpPublicKey:
		return 1 << 9
	case OpStatus:
		return 1 << 16
	case OpKeyRead:
		return 1 << 17
	case OpPropose:
		return 1 << 18
	case OpApprove:
		return 1 << 19
	case OpVeto:
		return 1 << 20
	case OpGovernanceRead:
		return 1 << 21
	case OpAuditRead:
		return 1 << 22
	case OpKeyAdmin:
		return 1 << 23
	}
	return 0
}

const keyOps opSet = 1<<10 - 1

// IsKeyOp reports whether op uses a key and therefore needs a grant.
func (op Op) IsKeyOp() bool { return opBit(op)&keyOps != 0 }

type roleSet uint8

func roleBit(r Role) roleSet {
	switch r {
	case RoleRelay:
		return 1 << 0
	case RoleOperator:
		return 1 << 1
	case RoleOfficer:
		return 1 << 2
	case RoleAuditor:
		return 1 << 3
	}
	return 0
}

// roleOps is the fixed table of what each role may ask for at all. Key ops
// belong to relays only: an operator or officer, however privileged, cannot
// decrypt, because no grant can be made to them (New refuses it).
func roleOps(r Role) opSet {
	switch r {
	case RoleRelay:
		return keyOps | opBit(OpStatus)
	case RoleOperator:
		return opBit(OpStatus) | opBit(OpKeyRead) | opBit(OpKeyAdmin) | opBit(OpPropose) | opBit(OpGovernanceRead)
	case RoleOfficer:
		return opBit(OpStatus) | opBit(OpKeyRead) | opBit(OpPropose) | opBit(OpApprove) |
			opBit(OpVeto) | opBit(OpGovernanceRead) | opBit(OpAuditRead)
	case RoleAuditor:
		return opBit(OpStatus) | opBit(OpKeyRead) | opBit(OpGovernanceRead) | opBit(OpAuditRead)
	}
	return 0
}

// Identity is an authenticated caller: the SHA-256 of its client
// certificate's public key, or a URI SAN, and the roles it holds.
type Identity struct {
	ID    string `json:"id"`
	Roles []Role `json:"roles"`
}

// Grant allows one identity to perform some key operations on one key.
type Grant struct {
	ID         string `json:"id"`
	Identity   string `json:"identity"`
	Key        string `json:"key"`
	Operations []Op   `json:"operations"`
	// ContextMatch, if set, requires every listed pair to be present and
	// equal in the request's encryption context.
	ContextMatch map[string]string `json:"context_match,omitempty"`
	// RecipientKeys are SHA-256 digests of the SubjectPublicKeyInfo of the
	// public keys a data key may be wrapped to (key transport).
	RecipientKeys [][]byte `json:"recipient_keys,omitempty"`
	// AllowPlaintext lets datakey/unwrap return a plaintext data key; without
	// it a data key is only ever returned wrapped to a recipient key.
	AllowPlaintext bool `json:"allow_plaintext"`
	// SPKI, if set, pins the grant to one key as well as one name: the
	// lower-case hex SHA-256 of the SubjectPublicKeyInfo the caller's
	// certificate must carry. A certificate with the right identity (URI
	// SAN) but another key gets nothing from this grant, so whoever holds
	// the client CA cannot stand in for the relay with a key of their own.
	SPKI string `json:"spki,omitempty"`
}

// Subject is one identity on one key: the unit grants, budgets and freezes
// apply to.
type Subject struct {
	Identity string `json:"identity"`
	Key      string `json:"key"`
}

// Validate checks a grant on its own: a named key (no wildcard), known key
// operations, non-empty context match keys and 32-byte recipient digests.
func (g Grant) Validate() error {
	if err := names.ID(g.ID, MaxGrantIDLen); err != nil {
		return fmt.Errorf("%w: id: %w", ErrInvalidSpec, err)
	}
	if err := names.ID(g.Identity, MaxIdentityLen); err != nil {
		return fmt.Errorf("%w: identity: %w", ErrInvalidSpec, err)
	}
	if err := validKeyName(g.Key); err != nil {
		return fmt.Errorf("%w: key: %v", ErrInvalidSpec, err)
	}
	if len(g.Operations) == 0 {
		return fmt.Errorf("%w: operations: empty", ErrInvalidSpec)
	}
	for i, op := range g.Operations {
		if !op.IsKeyOp() {
			return fmt.Errorf("%w: operations[%d]: %q is not a grantable key operation", ErrInvalidSpec, i, op)
		}
	}
	for k, v := range g.ContextMatch {
		if k == "" {
			return fmt.Errorf("%w: context_match: empty key", ErrInvalidSpec)
		}
		if names.Text(k, 128) != nil || names.Text(v, 1024) != nil {
			return fmt.Errorf("%w: context_match: control characters or over-long pair", ErrInvalidSpec)
		}
	}
	for i, r := range g.RecipientKeys {
		if len(r) != 32 {
			return fmt.Errorf("%w: recipient_keys[%d]: want a 32-byte SHA-256, got %d bytes", ErrInvalidSpec, i, len(r))
		}
	}
	if g.SPKI != "" && !isLowerHex64(g.SPKI) {
		return fmt.Errorf("%w: spki: want the lower-case hex SHA-256 of a SubjectPublicKeyInfo (64 digits)", ErrInvalidSpec)
	}
	return nil
}

func isLowerHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// validKeyName applies the one key-name rule (which refuses patterns:
// grants and orders name exactly one key).
func validKeyName(k string) error { return names.KeyName(k) }

// Limits on the ids a grant or order carries.
const (
	// MaxGrantIDLen bounds grant ids.
	MaxGrantIDLen = 256
	// MaxIdentityLen bounds identities (a URI SAN or "spki:" + hex).
	MaxIdentityLen = 1024
)

// CheckUsable refuses a grant that could be stored but never used as
// meant: datakey or unwrap with neither AllowPlaintext nor RecipientKeys
// can make and store wrapped data keys, but no data key ever comes back
// (every GenerateDataKey with plaintext, Unwrap, FetchDataKey and client
// Seal is refused). It is checked where grants are made (ceremony,
// add-grant proposals), not on grants already in force, so stored state
// always loads. The error wraps ErrUnusableGrant and names both fixes.
func (g Grant) CheckUsable() error {
	if g.AllowPlaintext || len(g.RecipientKeys) > 0 {
		return nil
	}
	var ops []string
	for _, op := range g.Operations {
		if op == OpDataKey || op == OpUnwrap {
			ops = append(ops, string(op))
		}
	}
	if len(ops) == 0 {
		return nil
	}
	return fmt.Errorf("%w: grant %q gives %s on key %q but no way to receive a data key: "+
		"add recipient_keys (the relay's RSA public key, for key transport) or allow_plaintext: true",
		ErrUnusableGrant, g.ID, strings.Join(ops, " and "), g.Key)
}

// Spec is the serialisable form of a Policy.
type Spec struct {
	Identities []Identity `json:"identities"`
	Grants     []Grant    `json:"grants"`
	// Frozen subjects are refused every key operation (ErrFrozen).
	Frozen []Subject `json:"frozen,omitempty"`
}

type kv struct{ k, v string }

type compiledGrant struct {
	id             string
	spki           string
	ops            opSet
	match          []kv
	recipients     [][]byte
	allowPlaintext bool
}

func (g *compiledGrant) matches(ctx map[string]string) bool {
	for _, p := range g.match {
		v, ok := ctx[p.k]
		if !ok || v != p.v {
			return false
		}
	}
	return true
}

// Policy is an immutable, precomputed snapshot of a Spec. It is safe for
// concurrent use; to change policy, build a new one.
type Policy struct {
	spec   Spec
	roles  map[string]roleSet
	grants map[Subject][]compiledGrant
	frozen map[Subject]struct{}
}

// New validates spec and builds a Policy from a private copy of it.
func New(spec Spec) (*Policy, error) {
	spec = cloneSpec(spec)
	p := &Policy{
		spec:   spec,
		roles:  make(map[string]roleSet, len(spec.Identities)),
		grants: make(map[Subject][]compiledGrant, len(spec.Grants)),
		frozen: make(map[Subject]struct{}, len(spec.Frozen)),
	}
	for i, id := range spec.Identities {
		if id.ID == "" {
			return nil, fmt.Errorf("%w: identities[%d].id: empty", ErrInvalidSpec, i)
		}
		if _, dup := p.roles[id.ID]; dup {
			return nil, fmt.Errorf("%w: identities[%d].id: duplicate %q", ErrInvalidSpec, i, id.ID)
		}
		if len(id.Roles) == 0 {
			return nil, fmt.Errorf("%w: identities[%d].roles: empty", ErrInvalidSpec, i)
		}
		var rs roleSet
		for j, r := range id.Roles {
			b := roleBit(r)
			if b == 0 {
				return nil, fmt.Errorf("%w: identities[%d].roles[%d]: unknown role %q", ErrInvalidSpec, i, j, r)
			}
			rs |= b
		}
		p.roles[id.ID] = rs
	}
	// Sorted by ID so that, when several grants could allow a request, the
	// one reported in the Decision does not depend on input order.
	order := make([]int, len(spec.Grants))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return spec.Grants[order[a]].ID < spec.Grants[order[b]].ID })
	seen := make(map[string]bool, len(spec.Grants))
	for _, i := range order {
		g := spec.Grants[i]
		if err := g.Validate(); err != nil {
			return nil, fmt.Errorf("grants[%d]: %w", i, err)
		}
		if seen[g.ID] {
			return nil, fmt.Errorf("%w: grants[%d].id: duplicate %q", ErrInvalidSpec, i, g.ID)
		}
		seen[g.ID] = true
		rs, ok := p.roles[g.Identity]
		if !ok {
			return nil, fmt.Errorf("%w: grants[%d].identity: unknown identity %q", ErrInvalidSpec, i, g.Identity)
		}
		if rs&roleBit(RoleRelay) == 0 {
			return nil, fmt.Errorf("%w: grants[%d].identity: %q does not hold the relay role", ErrInvalidSpec, i, g.Identity)
		}
		cg := compiledGrant{id: g.ID, spki: g.SPKI, recipients: g.RecipientKeys, allowPlaintext: g.AllowPlaintext}
		for _, op := range g.Operations {
			cg.ops |= opBit(op)
		}
		for k, v := range g.ContextMatch {
			cg.match = append(cg.match, kv{k, v})
		}
		slices.SortFunc(cg.match, func(a, b kv) int { return strings.Compare(a.k, b.k) })
		s := Subject{g.Identity, g.Key}
		p.grants[s] = append(p.grants[s], cg)
	}
	for i, s := range spec.Frozen {
		if s.Identity == "" || s.Key == "" {
			return nil, fmt.Errorf("%w: frozen[%d]: identity and key are required", ErrInvalidSpec, i)
		}
		p.frozen[s] = struct{}{}
	}
	return p, nil
}

// Spec returns a copy of the specification the Policy was built from.
func (p *Policy) Spec() Spec { return cloneSpec(p.spec) }

// Decision describes an allowed request.
type Decision struct {
	Identity string
	Role     Role
	Op       Op
	Key      string
	// GrantID is the grant that allowed a key operation; empty for
	// administrative operations.
	GrantID string
	// AllowPlaintext is the grant's permission to return plaintext data keys.
	AllowPlaintext bool
	recipients     [][]byte
}

// RecipientAllowed reports whether the grant allows wrapping a data key to
// the public key whose SubjectPublicKeyInfo has SHA-256 spkiSHA256.
func (d Decision) RecipientAllowed(spkiSHA256 []byte) bool {
	for _, r := range d.recipients {
		if string(r) == string(spkiSHA256) {
			return true
		}
	}
	return false
}

// Authorize decides whether identity, acting as role, may perform op on key
// with the request's encryption context ctx. For administrative ops key and
// ctx are ignored. It allocates nothing when it allows.
//
// Denials, in the order checked: ErrUnknownOp; ErrNoRole (unknown identity,
// or role not held); ErrNotGranted (role cannot perform op); ErrFrozen;
// ErrNotGranted (no grant for op on key); ErrContextMismatch (a grant has the
// op but none matches ctx).
//
// Authorize knows no caller key: a grant pinned to an SPKI never allows
// through it (see AuthorizeCaller).
func (p *Policy) Authorize(identity string, role Role, op Op, key string, ctx map[string]string) (Decision, error) {
	return p.AuthorizeCaller(identity, "", role, op, key, ctx)
}

// AuthorizeCaller is Authorize for a caller whose certificate carries the
// public key with SubjectPublicKeyInfo SHA-256 spki (lower-case hex; "" if
// unknown). A grant pinned to an SPKI allows only a caller with that key;
// a caller refused only by such pins gets ErrKeyMismatch.
func (p *Policy) AuthorizeCaller(identity, spki string, role Role, op Op, key string, ctx map[string]string) (Decision, error) {
	bit := opBit(op)
	if bit == 0 {
		return Decision{}, fmt.Errorf("%w: %q", ErrUnknownOp, op)
	}
	rb := roleBit(role)
	if rb == 0 || p.roles[identity]&rb == 0 {
		return Decision{}, fmt.Errorf("%w: identity %q, role %q", ErrNoRole, identity, role)
	}
	if roleOps(role)&bit == 0 {
		return Decision{}, fmt.Errorf("%w: role %q cannot %s", ErrNotGranted, role, op)
	}
	d := Decision{Identity: identity, Role: role, Op: op, Key: key}
	if bit&keyOps == 0 {
		return d, nil
	}
	s := Subject{identity, key}
	if _, ok := p.frozen[s]; ok {
		return Decision{}, fmt.Errorf("%w: identity %q, key %q", ErrFrozen, identity, key)
	}
	gs := p.grants[s]
	opGranted, pinned := false, false
	for i := range gs {
		g := &gs[i]
		if g.ops&bit == 0 {
			continue
		}
		if g.spki != "" && g.spki != spki {
			pinned = true
			continue
		}
		opGranted = true
		if !g.matches(ctx) {
			continue
		}
		d.GrantID = g.id
		d.AllowPlaintext = g.allowPlaintext
		d.recipients = g.recipients
		return d, nil
	}
	if opGranted {
		return Decision{}, fmt.Errorf("%w: identity %q, key %q, op %s", ErrContextMismatch, identity, key, op)
	}
	if pinned {
		return Decision{}, fmt.Errorf("%w: %w: identity %q, key %q, op %s: the grant is pinned to another public key", ErrNotGranted, ErrKeyMismatch, identity, key, op)
	}
	return Decision{}, fmt.Errorf("%w: identity %q, key %q, op %s", ErrNotGranted, identity, key, op)
}

func cloneSpec(s Spec) Spec {
	out := Spec{
		Identities: make([]Identity, len(s.Identities)),
		Grants:     make([]Grant, len(s.Grants)),
		Frozen:     slices.Clone(s.Frozen),
	}
	for i, id := range s.Identities {
		out.Identities[i] = Identity{ID: id.ID, Roles: slices.Clone(id.Roles)}
	}
	for i, g := range s.Grants {
		out.Grants[i] = cloneGrant(g)
	}
	return out
}

func cloneGrant(g Grant) Grant {
	g.Operations = slices.Clone(g.Operations)
	if g.ContextMatch != nil {
		m := make(map[string]string, len(g.ContextMatch))
		for k, v := range g.ContextMatch {
			m[k] = v
		}
		g.ContextMatch = m
	}
	if g.RecipientKeys != nil {
		rk := make([][]byte, len(g.RecipientKeys))
		for i, r := range g.RecipientKeys {
			rk[i] = slices.Clone(r)
		}
		g.RecipientKeys = rk
	}
	return g
}
