package governance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
)

// Trust fixed by the ceremony.
//
// The key ceremony records, in the signed transcript and in the governance
// state, what the configuration said about trust when it ran: the client
// CAs (by certificate fingerprint), every identity's role, the time-lock,
// the proposal lifetime, the freeze rule, quorum_required and whether the
// vault is a production vault. From then on that record is in force, not
// the file: Open refuses a configuration that disagrees with it, naming
// every difference, and only a set-trust proposal changes it (widening
// changes wait out the time-lock). A set-trust takes effect when it
// executes; the operator then edits the configuration to match before the
// next start.

// ErrTrustMismatch: the configuration disagrees with the trust in force.
var ErrTrustMismatch = errors.New("governance: the configuration disagrees with the trust fixed by the key ceremony")

// TrustMismatchError lists every difference between the configuration and
// the trust in force. It wraps ErrTrustMismatch.
type TrustMismatchError struct {
	Differences []quorum.TrustDifference
}

func (e *TrustMismatchError) Error() string {
	return fmt.Sprintf("the configuration disagrees with the trust fixed by the key ceremony; refusing to start "+
		"(a set-trust proposal changes it; edit the config to match once it has executed): %s", quorum.FormatDifferences(e.Differences))
}

func (e *TrustMismatchError) Unwrap() error { return ErrTrustMismatch }

// ProductionMarker is an optional capability of a Token: a second token
// object, made by a production ceremony, by which a start with dev: true
// is refused before the store is even read.
type ProductionMarker interface {
	MarkProduction(ctx context.Context) error
}

// minProductionTimeLock is the shortest time-lock a production vault may
// be given (the configuration's own floor).
const minProductionTimeLock = time.Hour

// ConfigTrust is the trust a configuration declares through o: what the
// ceremony records, and what later starts are compared with. o's defaults
// are applied as Open applies them.
func ConfigTrust(o Options) quorum.CeremonyTrust {
	o.setDefaults()
	t := quorum.CeremonyTrust{Production: o.Production, Trust: quorum.Trust{
		ClientCAs: slices.Clone(o.ClientCAs), Roles: map[string]policy.Role{},
		TimeLock: o.TimeLock, ProposalTTL: o.ProposalTTL, Freeze: o.Freeze, QuorumRequired: o.QuorumRequired,
	}}
	slices.Sort(t.ClientCAs)
	t.ClientCAs = slices.Compact(t.ClientCAs)
	for _, id := range o.Identities {
		if len(id.Roles) > 0 {
			t.Roles[id.ID] = id.Roles[0]
		}
	}
	return t
}

// CheckStoredTrust compares the trust recorded in a governance state value
// read without authentication (a sealed custodyd reads it before it can
// check the store's MAC) with cfg. It lets custodyd refuse a configuration
// that disagrees before officers are asked to unseal it; the comparison
// that counts is made again on the authenticated store. A value that does
// not decode, or that records no trust, is not judged here.
func CheckStoredTrust(rawState []byte, cfg quorum.CeremonyTrust) error {
	var st struct {
		Ceremony bool                  `json:"ceremony"`
		Trust    *quorum.CeremonyTrust `json:"trust"`
	}
	if json.Unmarshal(rawState, &st) != nil || !st.Ceremony || st.Trust == nil {
		return nil
	}
	if d := st.Trust.Diff(cfg); len(d) > 0 {
		return &TrustMismatchError{Differences: d}
	}
	return nil
}

// StateKey is where the governance state is stored (for CheckStoredTrust).
const StateKey = stateKey

// trust is the trust in force for st: the ceremony's (as set-trust
// proposals changed it), or the configuration's before the ceremony.
// Called with g.mu held (or before serving).
func (g *Governance) trust(st State) quorum.CeremonyTrust {
	if st.Ceremony && st.Trust != nil {
		return *st.Trust
	}
	return ConfigTrust(g.o)
}

// identities are the identities and roles in force for st.
func (g *Governance) identities(st State) []policy.Identity {
	if !st.Ceremony || st.Trust == nil {
		return g.o.Identities
	}
	out := make([]policy.Identity, 0, len(st.Trust.Roles))
	for id, r := range st.Trust.Roles {
		out = append(out, policy.Identity{ID: id, Roles: []policy.Role{r}})
	}
	slices.SortFunc(out, func(a, b policy.Identity) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// checkTrust refuses a configuration that disagrees with the trust the
// ceremony fixed. Called by load, before anything is written.
func (g *Governance) checkTrust(st State) error {
	if !st.Ceremony || st.Trust == nil {
		return nil
	}
	if d := st.Trust.Diff(ConfigTrust(g.o)); len(d) > 0 {
		return &TrustMismatchError{Differences: d}
	}
	return nil
}

// adoptTrust records the configuration's trust for a vault whose ceremony
// ran before trust was fixed by it (an upgrade), on the record.
func (g *Governance) adoptTrust(ctx context.Context) error {
	if !g.st.Ceremony || g.st.Trust != nil {
		return nil
	}
	t := ConfigTrust(g.o)
	if err := g.record(ctx, Event{Actor: System, Action: "trust-adopt",
		Detail: fmt.Sprintf("the ceremony ran before trust was fixed by it: the configuration's trust is fixed now (production %t, %d client CAs, %d identities, time-lock %s)",
			t.Production, len(t.ClientCAs), len(t.Roles), t.TimeLock)}); err != nil {
		return err
	}
	g.o.Logger.Warn("governance: this vault's ceremony predates trust fixed by the ceremony; the configuration's trust (client CAs, roles, time-lock, freeze rule) is fixed now and changes only by a set-trust proposal")
	next := g.st.clone()
	next.Trust = &t
	return g.commit(ctx, g.ledgerState(), next)
}

// markProduction makes the production marker if the token can hold it.
func (g *Governance) markProduction(ctx context.Context, st State) error {
	if !st.Ceremony || st.Trust == nil || !st.Trust.Production {
		return nil
	}
	pm, ok := g.o.Token.(ProductionMarker)
	if !ok {
		return nil
	}
	if err := pm.MarkProduction(ctx); err != nil {
		return fmt.Errorf("production marker: %w", err)
	}
	return nil
}

// precheckTrust refuses a set-trust that could never be right. Called with
// g.mu held.
func (g *Governance) precheckTrust(v quorum.SetTrust) error {
	cur := g.trust(g.st)
	t := v.Trust
	if cur.Production && t.TimeLock < minProductionTimeLock {
		return fmt.Errorf("%w: set-trust.trust.time_lock: %s is below %s, the least a production vault may have", quorum.ErrInvalidProposal, t.TimeLock, minProductionTimeLock)
	}
	officers := 0
	for _, r := range t.Roles {
		if r == policy.RoleOfficer {
			officers++
		}
	}
	if officers == 0 {
		return fmt.Errorf("%w: set-trust.trust.roles: no identity would hold the officer role, so no proposal could ever be approved again", quorum.ErrInvalidProposal)
	}
	return nil
}

// execSetTrust replaces the trust in force. It takes effect at once: roles
// and the client CA set in the next Snapshot, the time-lock for proposals
// from now on (a pending lock is never shortened), the freeze rule for the
// next refusal.
func execSetTrust(g *Governance, pl quorum.Payload, c *change) error {
	v := pl.(quorum.SetTrust)
	if err := g.precheckTrust(v); err != nil {
		return err
	}
	cur := g.trust(c.next)
	next := quorum.CeremonyTrust{Production: cur.Production, Trust: v.Trust.Clone()}
	c.next.Trust = &next
	tl := next.TimeLock
	c.timeLock = &tl
	rule := next.Freeze
	c.budget = func(b *budgetLedger) ([]store.Op, error) { return nil, b.putFreezeRule(rule) }
	return nil
}

// withTimeLock returns the ledger with its time-lock for new proposals set
// to d (pending proposals keep theirs, or wait longer).
func withTimeLock(l *quorum.Ledger, d time.Duration) (*quorum.Ledger, error) {
	ls := l.Snapshot()
	ls.Options.TimeLock = d
	return quorum.RestoreLedger(ls)
}
