package quorum

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/custodyhq/custody/internal/names"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/strictjson"
)

// Kind names what a proposal does.
type Kind string

// Proposal kinds.
const (
	KindCreateKey       Kind = "create-key"
	KindDestroyKey      Kind = "destroy-key"
	KindRotateKey       Kind = "rotate-key"
	KindEnableVersion   Kind = "enable-version"
	KindDisableVersion  Kind = "disable-version"
	KindAddGrant        Kind = "add-grant"
	KindRemoveGrant     Kind = "remove-grant"
	KindSetBudget       Kind = "set-budget"
	KindUnfreeze        Kind = "unfreeze"
	KindAddOfficer      Kind = "add-officer"
	KindRemoveOfficer   Kind = "remove-officer"
	KindSetThreshold    Kind = "set-threshold"
	KindDisclosureOrder Kind = "disclosure-order"
)

// Payload is the kind-specific content of a proposal. The types in this
// package are the only implementations.
type Payload interface {
	Kind() Kind
	Validate() error
}

// newPayload returns a pointer to an empty payload of kind k, to decode into.
func newPayload(k Kind) (Payload, bool) {
	switch k {
	case KindCreateKey:
		return &CreateKey{}, true
	case KindDestroyKey:
		return &DestroyKey{}, true
	case KindRotateKey:
		return &RotateKey{}, true
	case KindEnableVersion:
		return &EnableVersion{}, true
	case KindDisableVersion:
		return &DisableVersion{}, true
	case KindAddGrant:
		return &AddGrant{}, true
	case KindRemoveGrant:
		return &RemoveGrant{}, true
	case KindSetBudget:
		return &SetBudget{}, true
	case KindUnfreeze:
		return &Unfreeze{}, true
	case KindAddOfficer:
		return &AddOfficer{}, true
	case KindRemoveOfficer:
		return &RemoveOfficer{}, true
	case KindSetThreshold:
		return &SetThreshold{}, true
	case KindDisclosureOrder:
		return &DisclosureOrder{}, true
	case KindRekeySeal:
		return &RekeySeal{}, true
	case KindSetTrust:
		return &SetTrust{}, true
	}
	return nil, false
}

// CreateKey creates a named key with the given algorithm (as internal/keys
// names it).
type CreateKey struct {
	Name      string `json:"name"`
	Algorithm string `json:"algorithm"`
}

// DestroyKey schedules destruction of one version of a key, or of every
// version when Version is 0.
type DestroyKey struct {
	Name    string `json:"name"`
	Version int    `json:"version"`
}

// RotateKey makes a new primary version of a key.
type RotateKey struct {
	Name string `json:"name"`
}

// EnableVersion re-enables a disabled key version.
type EnableVersion struct {
	Name    string `json:"name"`
	Version int    `json:"version"`
}

// DisableVersion disables a key version.
type DisableVersion struct {
	Name    string `json:"name"`
	Version int    `json:"version"`
}

// AddGrant adds a grant.
type AddGrant struct {
	Grant policy.Grant `json:"grant"`
}

// RemoveGrant removes the grant with GrantID.
type RemoveGrant struct {
	GrantID string `json:"grant_id"`
}

// SetBudget sets the budget of Identity on Key, or the key's shared budget
// when Identity is empty.
type SetBudget struct {
	Identity string        `json:"identity,omitempty"`
	Key      string        `json:"key"`
	Budget   policy.Budget `json:"budget"`
}

// Unfreeze lifts the freeze on Identity for Key.
type Unfreeze struct {
	Identity string `json:"identity"`
	Key      string `json:"key"`
}

// AddOfficer adds an officer.
type AddOfficer struct {
	Officer Officer `json:"officer"`
}

// RemoveOfficer removes the officer called Name.
type RemoveOfficer struct {
	Name string `json:"name"`
}

// SetThreshold sets M, the approvals a proposal needs.
type SetThreshold struct {
	Threshold int `json:"threshold"`
}

// DisclosureOrder issues a disclosure order.
type DisclosureOrder struct {
	Order policy.Order `json:"order"`
}

// Kind implementations.
func (CreateKey) Kind() Kind       { return KindCreateKey }
func (DestroyKey) Kind() Kind      { return KindDestroyKey }
func (RotateKey) Kind() Kind       { return KindRotateKey }
func (EnableVersion) Kind() Kind   { return KindEnableVersion }
func (DisableVersion) Kind() Kind  { return KindDisableVersion }
func (AddGrant) Kind() Kind        { return KindAddGrant }
func (RemoveGrant) Kind() Kind     { return KindRemoveGrant }
func (SetBudget) Kind() Kind       { return KindSetBudget }
func (Unfreeze) Kind() Kind        { return KindUnfreeze }
func (AddOfficer) Kind() Kind      { return KindAddOfficer }
func (RemoveOfficer) Kind() Kind   { return KindRemoveOfficer }
func (SetThreshold) Kind() Kind    { return KindSetThreshold }
func (DisclosureOrder) Kind() Kind { return KindDisclosureOrder }

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidProposal}, a...)...)
}

// Validate implementations.
func (p CreateKey) Validate() error {
	if err := names.KeyName(p.Name); err != nil {
		return invalid("create-key.name: %w", err)
	}
	if err := names.ID(p.Algorithm, maxIDLen); err != nil {
		return invalid("create-key.algorithm: %w", err)
	}
	return nil
}
func (p DestroyKey) Validate() error { return keyVersion("destroy-key", p.Name, p.Version, 0) }
func (p RotateKey) Validate() error {
	if err := names.KeyName(p.Name); err != nil {
		return invalid("rotate-key.name: %w", err)
	}
	return nil
}
func (p EnableVersion) Validate() error  { return keyVersion("enable-version", p.Name, p.Version, 1) }
func (p DisableVersion) Validate() error { return keyVersion("disable-version", p.Name, p.Version, 1) }
func (p AddGrant) Validate() error {
	if err := p.Grant.Validate(); err != nil {
		return invalid("add-grant.grant: %w", err)
	}
	return nil
}
func (p RemoveGrant) Validate() error {
	if err := names.ID(p.GrantID, maxIDLen); err != nil {
		return invalid("remove-grant.grant_id: %w", err)
	}
	return nil
}
func (p SetBudget) Validate() error {
	if err := names.KeyName(p.Key); err != nil {
		return invalid("set-budget.key: %w", err)
	}
	if p.Identity != "" {
		if err := names.ID(p.Identity, policy.MaxIdentityLen); err != nil {
			return invalid("set-budget.identity: %w", err)
		}
	}
	if err := p.Budget.Validate(); err != nil {
		return invalid("set-budget.budget: %w", err)
	}
	return nil
}
func (p Unfreeze) Validate() error {
	if err := names.ID(p.Identity, policy.MaxIdentityLen); err != nil {
		return invalid("unfreeze.identity: %w", err)
	}
	if err := names.KeyName(p.Key); err != nil {
		return invalid("unfreeze.key: %w", err)
	}
	return nil
}
func (p AddOfficer) Validate() error {
	if err := p.Officer.Validate(); err != nil {
		return invalid("add-officer.officer: %w", err)
	}
	return nil
}
func (p RemoveOfficer) Validate() error {
	if err := names.ID(p.Name, maxIDLen); err != nil {
		return invalid("remove-officer.name: %w", err)
	}
	return nil
}
func (p SetThreshold) Validate() error {
	if p.Threshold < 1 {
		return invalid("set-threshold.threshold: must be at least 1")
	}
	return nil
}
func (p DisclosureOrder) Validate() error {
	if p.Order.Used != 0 {
		return invalid("disclosure-order.order.used: must be 0")
	}
	if err := p.Order.Validate(); err != nil {
		return invalid("disclosure-order.order: %w", err)
	}
	return nil
}

func keyVersion(kind, name string, v, min int) error {
	if err := names.KeyName(name); err != nil {
		return invalid("%s.name: %w", kind, err)
	}
	if v < min {
		return invalid("%s.version: must be at least %d", kind, min)
	}
	return nil
}

// Proposal is a governance change awaiting approval. Its identity is its
// Digest: approvals sign the digest, so any change to any field, the Nonce
// included, invalidates every approval.
type Proposal struct {
	ID       string
	Kind     Kind
	Payload  Payload
	Proposer string
	Created  time.Time
	Expires  time.Time
	// Nonce (at least 16 random bytes) makes two otherwise identical
	// proposals distinct, so approvals of one cannot be replayed on the other.
	Nonce []byte
	// Vault names the vault the proposal is for (VaultOf its audit public
	// key), so that approvals of it cannot be replayed on another vault
	// that shares its officers. custodyd files only proposals for itself;
	// "" appears only in proposals recorded before vaults were named.
	Vault string
}

// VaultOf names a vault by its HSM audit public key (PKIX DER): the
// lower-case hex SHA-256. Anyone can read the key (GetCeremonyTranscript,
// GetStatus), and no two vaults share one.
func VaultOf(auditPublicKeyDER []byte) string {
	sum := sha256.Sum256(auditPublicKeyDER)
	return hex.EncodeToString(sum[:])
}

func validVault(v string) bool {
	if len(v) != 64 {
		return false
	}
	for _, c := range v {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Digest is the SHA-256 of a proposal's canonical bytes.
type Digest [32]byte

// String returns the digest in lower-case hex.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// NewProposal returns a proposal with a random ID and nonce, created at now
// and expiring after ttl.
func NewProposal(payload Payload, proposer string, now time.Time, ttl time.Duration) (Proposal, error) {
	if payload == nil {
		return Proposal{}, invalid("payload: missing")
	}
	var id [8]byte
	nonce := make([]byte, 16)
	if _, err := rand.Read(id[:]); err != nil {
		return Proposal{}, err
	}
	if _, err := rand.Read(nonce); err != nil {
		return Proposal{}, err
	}
	p := Proposal{
		ID:       "p-" + hex.EncodeToString(id[:]),
		Kind:     payload.Kind(),
		Payload:  payload,
		Proposer: proposer,
		Created:  now.UTC().Round(0),
		Expires:  now.Add(ttl).UTC().Round(0),
		Nonce:    nonce,
	}
	return p, p.Validate()
}

// maxIDLen bounds proposal IDs and proposer names.
const maxIDLen = 256

// Validate checks the envelope and the payload.
func (p Proposal) Validate() error {
	switch {
	case names.ID(p.ID, maxIDLen) != nil:
		return invalid("id: %w", names.ID(p.ID, maxIDLen))
	case names.ID(p.Proposer, policy.MaxIdentityLen) != nil:
		return invalid("proposer: %w", names.ID(p.Proposer, policy.MaxIdentityLen))
	case p.Created.IsZero():
		return invalid("created: required")
	case !p.Expires.After(p.Created):
		return invalid("expires: must be after created")
	case len(p.Nonce) < 16 || len(p.Nonce) > 64:
		return invalid("nonce: must be 16 to 64 bytes")
	case p.Vault != "" && !validVault(p.Vault):
		return invalid("vault: must be 64 lower-case hex digits (the SHA-256 of the vault's audit public key)")
	case p.Payload == nil:
		return invalid("payload: missing")
	case p.Payload.Kind() != p.Kind:
		return invalid("kind: %q does not match payload kind %q", p.Kind, p.Payload.Kind())
	}
	return p.Payload.Validate()
}

// wire is the JSON form. Times are UTC so that one instant has one encoding.
type wire struct {
	ID       string          `json:"id"`
	Kind     Kind            `json:"kind"`
	Payload  json.RawMessage `json:"payload"`
	Proposer string          `json:"proposer"`
	Created  time.Time       `json:"created"`
	Expires  time.Time       `json:"expires"`
	Nonce    []byte          `json:"nonce"`
	Vault    string          `json:"vault,omitempty"`
}

// MarshalJSON encodes p with its payload under "payload".
func (p Proposal) MarshalJSON() ([]byte, error) {
	if p.Payload == nil {
		return nil, invalid("payload: missing")
	}
	pl := p.Payload
	if d, ok := pl.(*DisclosureOrder); ok {
		pl = *d
	}
	if d, ok := pl.(DisclosureOrder); ok {
		d.Order.NotAfter = d.Order.NotAfter.UTC()
		pl = d
	}
	raw, err := json.Marshal(pl)
	if err != nil {
		return nil, err
	}
	return json.Marshal(wire{
		ID: p.ID, Kind: p.Kind, Payload: raw, Proposer: p.Proposer,
		Created: p.Created.UTC(), Expires: p.Expires.UTC(), Nonce: p.Nonce, Vault: p.Vault,
	})
}

// UnmarshalJSON decodes a proposal strictly: unknown fields and unknown
// kinds are refused.
func (p *Proposal) UnmarshalJSON(b []byte) error {
	var w wire
	if err := strictjson.Unmarshal(b, &w); err != nil {
		return invalid("%v", err)
	}
	pl, ok := newPayload(w.Kind)
	if !ok {
		return invalid("kind: unknown %q", w.Kind)
	}
	if err := strictjson.Unmarshal(w.Payload, pl); err != nil {
		return invalid("payload: %v", err)
	}
	*p = Proposal{ID: w.ID, Kind: w.Kind, Payload: deref(pl), Proposer: w.Proposer, Created: w.Created, Expires: w.Expires, Nonce: w.Nonce, Vault: w.Vault}
	return nil
}

// deref turns the decoding pointer back into the value type, so decoded
// proposals hold the same payload types callers construct.
func deref(p Payload) Payload {
	switch v := p.(type) {
	case *CreateKey:
		return *v
	case *DestroyKey:
		return *v
	case *RotateKey:
		return *v
	case *EnableVersion:
		return *v
	case *DisableVersion:
		return *v
	case *AddGrant:
		return *v
	case *RemoveGrant:
		return *v
	case *SetBudget:
		return *v
	case *Unfreeze:
		return *v
	case *AddOfficer:
		return *v
	case *RemoveOfficer:
		return *v
	case *SetThreshold:
		return *v
	case *DisclosureOrder:
		return *v
	case *RekeySeal:
		return *v
	case *SetTrust:
		return *v
	}
	return p
}

// canonicalPrefix separates proposal digests from every other use of SHA-256.
const canonicalPrefix = "custody-proposal-v1\n"

// CanonicalBytes returns the domain prefix followed by the proposal as JSON
// with object keys sorted at every level, no insignificant whitespace, no
// HTML escaping, UTC times and numbers exactly as encoded. Equal proposals
// have equal bytes on every machine and Go version that keeps
// encoding/json's output format.
func (p Proposal) CanonicalBytes() ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	raw, err := p.MarshalJSON()
	if err != nil {
		return nil, err
	}
	// Round-trip through generic values: encoding/json sorts map keys, and
	// UseNumber keeps int64 values exact.
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.WriteString(canonicalPrefix)
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Digest returns the SHA-256 of CanonicalBytes.
func (p Proposal) Digest() (Digest, error) {
	b, err := p.CanonicalBytes()
	if err != nil {
		return Digest{}, err
	}
	return sha256.Sum256(b), nil
}

// ParseCanonical decodes canonical proposal bytes. It refuses anything that
// is not exactly the canonical encoding of a valid proposal, so one proposal
// has one byte string and one digest.
func ParseCanonical(b []byte) (Proposal, error) {
	body, ok := bytes.CutPrefix(b, []byte(canonicalPrefix))
	if !ok {
		return Proposal{}, fmt.Errorf("%w: missing %q prefix", ErrNotCanonical, canonicalPrefix[:len(canonicalPrefix)-1])
	}
	var p Proposal
	if err := p.UnmarshalJSON(body); err != nil {
		return Proposal{}, err
	}
	again, err := p.CanonicalBytes()
	if err != nil {
		return Proposal{}, err
	}
	if !bytes.Equal(again, b) {
		return Proposal{}, ErrNotCanonical
	}
	return p, nil
}
