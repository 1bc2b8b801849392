package config

import (
	"fmt"
	"slices"

	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
)

// Trust is what this configuration declares about trust, in the form the
// key ceremony fixes (quorum.CeremonyTrust): the fingerprints of the
// certificates in tls.client_ca_file, every identity's role, the
// governance parameters and whether this is a production vault. After the
// ceremony custodyd refuses to start unless it equals the trust in force;
// `custodyctl proposal create set-trust --from-config` proposes it. Call it
// on a configuration with defaults applied; it reads the CA file.
func (c *Config) Trust() (quorum.CeremonyTrust, error) {
	cas, err := pki.CAFingerprints(c.TLS.ClientCAFile)
	if err != nil {
		return quorum.CeremonyTrust{}, fmt.Errorf("tls.client_ca_file: %w", err)
	}
	t := quorum.CeremonyTrust{Production: !c.Dev, Trust: quorum.Trust{
		ClientCAs: slices.Clone(cas), Roles: map[string]policy.Role{},
		TimeLock: c.Governance.TimeLock, ProposalTTL: c.Governance.ProposalTTL,
		Freeze: policy.FreezeRule{Refusals: c.Governance.Freeze.Refusals, Within: c.Governance.Freeze.Within},
		// A production vault is governed from its first start whatever
		// quorum_required says (internal/daemon).
		QuorumRequired: c.Governance.QuorumRequired || !c.Dev,
	}}
	for _, id := range c.Identities {
		t.Roles[id.ID()] = policy.Role(id.Role)
	}
	return t, nil
}
