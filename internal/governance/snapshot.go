package governance

import (
	"slices"
	"strings"

	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
)

// Snapshot is the access state in force: roles, grants, budgets, disclosure
// orders, officers and whether the vault is governed. It is immutable and
// built from the store's contents and the configured identities alone; the
// server reads it through one atomic pointer (Governance.Snapshot), so a
// request sees one consistent state from start to end.
type Snapshot struct {
	governed bool
	ceremony bool
	budgeted bool
	roles    map[string]policy.Role
	policy   *policy.Policy
	budgets  []BudgetEntry
	orders   []policy.Order
	officers quorum.OfficerSet
	// clientCAs are the fingerprints of the client CAs the ceremony fixed;
	// nil when no ceremony fixed them (every CA of the file is trusted).
	clientCAs map[string]bool
}

// Governed reports whether keys, grants and budgets change only by proposal.
func (s *Snapshot) Governed() bool { return s.governed }

// Ceremony reports whether the key ceremony has run.
func (s *Snapshot) Ceremony() bool { return s.ceremony }

// Role returns the role configured for identity.
func (s *Snapshot) Role(identity string) (policy.Role, bool) {
	r, ok := s.roles[identity]
	return r, ok
}

// Authorize decides a key operation by the grants in force (package policy).
// A grant pinned to a public key never allows through it: use
// AuthorizeCaller with the caller's key.
func (s *Snapshot) Authorize(identity string, role policy.Role, op policy.Op, key string, ctx map[string]string) (policy.Decision, error) {
	return s.policy.Authorize(identity, role, op, key, ctx)
}

// AuthorizeCaller decides a key operation for a caller whose certificate
// carries the public key with SubjectPublicKeyInfo SHA-256 spki (lower-case
// hex), so that grants pinned to a key allow only that key.
func (s *Snapshot) AuthorizeCaller(identity, spki string, role policy.Role, op policy.Op, key string, ctx map[string]string) (policy.Decision, error) {
	return s.policy.AuthorizeCaller(identity, spki, role, op, key, ctx)
}

// TrustsCA reports whether a client certificate whose verified chains end
// at the CAs with these fingerprints (lower-case hex SHA-256 of each
// chain's last certificate) is trusted: some chain must end at a CA the
// ceremony fixed. Before the ceremony fixed any, every chain the TLS layer
// verified is trusted.
func (s *Snapshot) TrustsCA(roots []string) bool {
	if s.clientCAs == nil {
		return true
	}
	for _, fp := range roots {
		if s.clientCAs[fp] {
			return true
		}
	}
	return false
}

// Grants returns the grants in force, sorted by id.
func (s *Snapshot) Grants() []policy.Grant {
	gs := s.policy.Spec().Grants
	slices.SortFunc(gs, func(a, b policy.Grant) int { return strings.Compare(a.ID, b.ID) })
	return gs
}

// Budgets returns the budgets in force, sorted by key then identity.
func (s *Snapshot) Budgets() []BudgetEntry {
	out := slices.Clone(s.budgets)
	slices.SortFunc(out, func(a, b BudgetEntry) int {
		if c := strings.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return strings.Compare(a.Identity, b.Identity)
	})
	return out
}

// Orders returns the disclosure orders recorded (ended ones included), with
// their use counts as of this snapshot, sorted by expiry.
func (s *Snapshot) Orders() []policy.Order {
	out := slices.Clone(s.orders)
	slices.SortFunc(out, func(a, b policy.Order) int { return a.NotAfter.Compare(b.NotAfter) })
	return out
}

// Officers returns the officer set (empty before the ceremony).
func (s *Snapshot) Officers() quorum.OfficerSet { return s.officers }

// HasOrder reports whether any order names identity on key, so a refused
// read need not take the governance lock to look for one.
func (s *Snapshot) HasOrder(identity, key string) bool {
	for _, o := range s.orders {
		if o.Recipient == identity && o.Key == key {
			return true
		}
	}
	return false
}
