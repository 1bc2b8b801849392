package quorum

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/custodyhq/custody/internal/names"
	"github.com/custodyhq/custody/internal/policy"
)

// KindSetTrust changes what the key ceremony fixed about trust.
const KindSetTrust Kind = "set-trust"

// Trust is the part of a vault's configuration that the key ceremony fixes,
// so that editing the config file cannot change it: which client CAs are
// trusted, which identity holds which role, and the governance parameters.
// After the ceremony custodyd refuses to start with a config that disagrees
// (naming each difference); a set-trust proposal changes it.
type Trust struct {
	// ClientCAs are the lower-case hex SHA-256 fingerprints of the DER of
	// every certificate in tls.client_ca_file, sorted, no duplicates.
	ClientCAs []string `json:"client_cas"`
	// Roles maps each configured identity (a URI SAN, or "spki:" and the
	// hex SHA-256 of a public key) to its role.
	Roles map[string]policy.Role `json:"roles"`
	// TimeLock is how long a widening proposal waits for a veto.
	TimeLock time.Duration `json:"time_lock"`
	// ProposalTTL is the longest a proposal may live.
	ProposalTTL time.Duration `json:"proposal_ttl"`
	// Freeze is the sustained-breach rule of budgets.
	Freeze policy.FreezeRule `json:"freeze"`
	// QuorumRequired refuses direct changes even before the ceremony (a
	// production vault is governed from its first start regardless).
	QuorumRequired bool `json:"quorum_required"`
}

// CeremonyTrust is the trust a ceremony fixed: Trust plus whether the vault
// is a production vault (a development vault's ceremony records false). The
// production flag never changes after the ceremony.
type CeremonyTrust struct {
	Production bool `json:"production"`
	Trust
}

// SetTrust replaces the vault's Trust (the production flag stays as the
// ceremony fixed it). It widens access, and so waits out the time-lock,
// when it adds a client CA, gives an identity a role it did not have,
// shortens the time-lock, lengthens the proposal lifetime, relaxes the
// freeze rule or stops requiring a quorum.
type SetTrust struct {
	Trust Trust `json:"trust"`
}

// Kind implements Payload.
func (SetTrust) Kind() Kind { return KindSetTrust }

// Validate implements Payload.
func (p SetTrust) Validate() error {
	if err := p.Trust.Validate(); err != nil {
		return invalid("set-trust.trust.%w", err)
	}
	return nil
}

// maxTrustEntries bounds the CAs and identities of a trust record.
const maxTrustEntries = 4096

// Validate checks a trust record on its own: at least one client CA, each
// a SHA-256 fingerprint in lower-case hex, sorted and unique (so one set
// has one encoding); valid identities and roles; positive durations with
// the proposal lifetime longer than the time-lock; a valid freeze rule.
func (t Trust) Validate() error {
	switch {
	case len(t.ClientCAs) == 0:
		return fmt.Errorf("client_cas: at least one client CA is required")
	case len(t.ClientCAs) > maxTrustEntries || len(t.Roles) > maxTrustEntries:
		return fmt.Errorf("client_cas, roles: at most %d entries each", maxTrustEntries)
	}
	for i, fp := range t.ClientCAs {
		if !isHexDigest(fp) {
			return fmt.Errorf("client_cas[%d]: %q is not a lower-case hex SHA-256 fingerprint", i, names.Escape(fp))
		}
		if i > 0 && t.ClientCAs[i-1] >= fp {
			return fmt.Errorf("client_cas[%d]: fingerprints must be sorted and unique", i)
		}
	}
	for id, r := range t.Roles {
		if err := names.ID(id, policy.MaxIdentityLen); err != nil {
			return fmt.Errorf("roles[%q]: %w", names.Escape(id), err)
		}
		if !validRole(r) {
			return fmt.Errorf("roles[%q]: %q is not a role", names.Escape(id), names.Escape(string(r)))
		}
	}
	switch {
	case t.TimeLock <= 0:
		return fmt.Errorf("time_lock: must be positive")
	case t.ProposalTTL <= t.TimeLock:
		return fmt.Errorf("proposal_ttl: must exceed time_lock")
	}
	if err := t.Freeze.Validate(); err != nil {
		return fmt.Errorf("freeze: %w", err)
	}
	return nil
}

func validRole(r policy.Role) bool {
	switch r {
	case policy.RoleRelay, policy.RoleOperator, policy.RoleOfficer, policy.RoleAuditor:
		return true
	}
	return false
}

func isHexDigest(s string) bool {
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

// Clone deep-copies t.
func (t Trust) Clone() Trust {
	t.ClientCAs = slices.Clone(t.ClientCAs)
	t.Roles = maps.Clone(t.Roles)
	return t
}

// Wider reports whether t gives anyone more than cur does: a client CA cur
// does not trust, an identity with a role it does not have under cur, a
// shorter time-lock, a longer proposal lifetime, a freeze rule that takes
// more refusals or a shorter window to trip, no quorum where cur requires
// one, or an officer's identity dropped or given another role.
func (t Trust) Wider(cur Trust) bool {
	for _, fp := range t.ClientCAs {
		if !slices.Contains(cur.ClientCAs, fp) {
			return true
		}
	}
	for id, r := range t.Roles {
		if cr, ok := cur.Roles[id]; !ok || cr != r {
			return true
		}
	}
	// An officer's certificate dropped or demoted reduces who can veto
	// (as removing an officer does): it waits out the lock, during which
	// that certificate still vetoes.
	for id, cr := range cur.Roles {
		if r, ok := t.Roles[id]; cr == policy.RoleOfficer && (!ok || r != cr) {
			return true
		}
	}
	return t.TimeLock < cur.TimeLock || t.ProposalTTL > cur.ProposalTTL ||
		t.Freeze.Refusals > cur.Freeze.Refusals || t.Freeze.Within < cur.Freeze.Within ||
		(cur.QuorumRequired && !t.QuorumRequired)
}

// TrustDifference is one way a configuration disagrees with the trust the
// ceremony fixed: the config field, the ceremony's value and the config's.
type TrustDifference struct {
	Field    string
	Ceremony string
	Config   string
}

func (d TrustDifference) String() string {
	return fmt.Sprintf("%s: ceremony %s, config %s", d.Field, d.Ceremony, d.Config)
}

// Diff lists every way cfg (the trust a configuration declares) differs from
// t (the trust in force), named by the configuration's field paths, in a
// fixed order.
func (t CeremonyTrust) Diff(cfg CeremonyTrust) []TrustDifference {
	var out []TrustDifference
	add := func(field string, cer, conf any) {
		out = append(out, TrustDifference{Field: field, Ceremony: fmt.Sprint(cer), Config: fmt.Sprint(conf)})
	}
	if t.Production != cfg.Production {
		add("dev", fmt.Sprintf("%t (production %t)", !t.Production, t.Production), fmt.Sprintf("%t (production %t)", !cfg.Production, cfg.Production))
	}
	for _, fp := range t.ClientCAs {
		if !slices.Contains(cfg.ClientCAs, fp) {
			add("tls.client_ca_file", "trusts CA sha256:"+fp, "lacks it")
		}
	}
	for _, fp := range cfg.ClientCAs {
		if !slices.Contains(t.ClientCAs, fp) {
			add("tls.client_ca_file", "does not trust CA sha256:"+fp, "adds it")
		}
	}
	ids := slices.Sorted(maps.Keys(t.Roles))
	for id := range cfg.Roles {
		if _, ok := t.Roles[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		cr, cok := t.Roles[id]
		fr, fok := cfg.Roles[id]
		if cok && fok && cr == fr {
			continue
		}
		role := func(r policy.Role, ok bool) string {
			if !ok {
				return "(none)"
			}
			return string(r)
		}
		add(fmt.Sprintf("identities[%s].role", names.Escape(id)), role(cr, cok), role(fr, fok))
	}
	if t.TimeLock != cfg.TimeLock {
		add("governance.time_lock", t.TimeLock, cfg.TimeLock)
	}
	if t.ProposalTTL != cfg.ProposalTTL {
		add("governance.proposal_ttl", t.ProposalTTL, cfg.ProposalTTL)
	}
	if t.Freeze.Refusals != cfg.Freeze.Refusals {
		add("governance.freeze.refusals", t.Freeze.Refusals, cfg.Freeze.Refusals)
	}
	if t.Freeze.Within != cfg.Freeze.Within {
		add("governance.freeze.within", t.Freeze.Within, cfg.Freeze.Within)
	}
	if t.QuorumRequired != cfg.QuorumRequired {
		add("governance.quorum_required", t.QuorumRequired, cfg.QuorumRequired)
	}
	return out
}

// FormatDifferences renders differences on one line, separated by "; ".
func FormatDifferences(ds []TrustDifference) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = d.String()
	}
	return strings.Join(s, "; ")
}
