package daemon

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/governance"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/sealsvc"
	"github.com/custodyhq/custody/internal/server"
	"github.com/custodyhq/custody/internal/store"
)

// defaultGovernanceInterval is how often time-locked proposals that have
// become ready are executed and budget refusal histories are flushed.
const defaultGovernanceInterval = time.Second

// openGovernance loads the governance state from the authenticated store
// and publishes the first access snapshot. A store whose governance records
// fail authentication, or that the token says was rolled back, stops
// start-up.
func (d *Daemon) openGovernance(ctx context.Context, reg prometheus.Registerer, signer crypto.Signer) error {
	cfg := d.cfg
	o, err := govOptions(cfg, d.opts, d.log)
	if err != nil {
		return err
	}
	o.Store, o.Keys, o.Token, o.Signer = d.Store, d.Keys, govToken{m: d.HSM}, signer
	o.Recorder = server.Recorder{Audit: d.Audit, Now: d.opts.Now}
	// The ceremony's PIN rotation and rekey by quorum (internal/sealsvc).
	o.Seal = sealHooks{d.Seal}
	g, err := governance.Open(ctx, o)
	if err != nil {
		return err
	}
	d.Gov = g
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "custody", Subsystem: "governance", Name: "pending_timelocks",
		Help: "Approved widening proposals waiting out their time-lock; any officer may veto them until it ends.",
	}, func() float64 { return float64(g.PendingTimeLocks()) }))
	return nil
}

// govOptions are the governance options the configuration gives, without
// the store, token and other parts of a running vault: what the key
// ceremony fixes (governance.ConfigTrust) and what later starts must agree
// with.
func govOptions(cfg *config.Config, opts Options, log *slog.Logger) (governance.Options, error) {
	instance, _ := os.Hostname()
	gov := cfg.Governance
	cas, err := pki.CAFingerprints(cfg.TLS.ClientCAFile)
	if err != nil {
		return governance.Options{}, fmt.Errorf("tls.client_ca_file: %w", err)
	}
	o := governance.Options{
		Identities: IdentitiesFromConfig(cfg),
		ClientCAs:  cas, Production: !cfg.Dev,
		TimeLock: gov.TimeLock, ProposalTTL: gov.ProposalTTL,
		Freeze: policy.FreezeRule{Refusals: gov.Freeze.Refusals, Within: gov.Freeze.Within},
		// Outside dev mode the vault is governed from its first start: keys,
		// grants and budgets come only from the key ceremony and proposals.
		QuorumRequired: gov.QuorumRequired || !cfg.Dev, AllowDev: cfg.Dev, Instance: "custodyd@" + instance,
		DestroyWait: cfg.Keys.DestroyWaitDefault, Now: opts.Now, Logger: log,
		// Grants are refused where they are made if they could never
		// return a data key (datakey/unwrap with no way to receive one).
		Check: func(g policy.Grant) error { return g.CheckUsable() },
	}
	if cfg.Dev {
		o.DevGrants = DevGrantsFromConfig(cfg)
		o.DevBudgets = DevBudgetsFromConfig(cfg)
	}
	return o, nil
}

// checkTrustSealed compares the configuration with the trust the key
// ceremony fixed, as recorded in the store, before the store can be
// authenticated (a sealed custodyd has no PIN yet): a configuration that
// disagrees stops start-up at once, before officers are asked to unseal.
// The authoritative comparison is governance.Open's, on the authenticated
// store; root who edits the stored record as well only gets past this one.
func (d *Daemon) checkTrustSealed(ctx context.Context) error {
	raw, err := d.rawValue(ctx, governance.StateKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return nil // judged once the store is authenticated
	}
	o, err := govOptions(d.cfg, d.opts, d.log)
	if err != nil {
		return err
	}
	return governance.CheckStoredTrust(raw, governance.ConfigTrust(o))
}

// IdentitiesFromConfig returns the configured identities and their roles.
func IdentitiesFromConfig(cfg *config.Config) []policy.Identity {
	var out []policy.Identity
	for _, id := range cfg.Identities {
		out = append(out, policy.Identity{ID: id.ID(), Roles: []policy.Role{policy.Role(id.Role)}})
	}
	return out
}

// DevGrantsFromConfig returns the config file's grants, which apply to a
// dev vault before its ceremony only.
func DevGrantsFromConfig(cfg *config.Config) []policy.Grant {
	byName := map[string]string{}
	for _, id := range cfg.Identities {
		byName[id.Name] = id.ID()
	}
	var out []policy.Grant
	for i, g := range cfg.Grants {
		ops := make([]policy.Op, len(g.Operations))
		for j, op := range g.Operations {
			ops[j] = policy.Op(op)
		}
		for _, k := range g.Keys {
			out = append(out, policy.Grant{
				ID: fmt.Sprintf("config-%d-%s", i, k), Identity: byName[g.Identity], Key: k, Operations: ops,
				ContextMatch: g.ContextMatch, RecipientKeys: g.RecipientKeyDigests(), AllowPlaintext: g.AllowPlaintext,
			})
		}
	}
	return out
}

// DevBudgetsFromConfig returns the config file's budgets (dev vaults only).
func DevBudgetsFromConfig(cfg *config.Config) []governance.BudgetEntry {
	ids := map[string]string{}
	for _, id := range cfg.Identities {
		ids[id.Name] = id.ID()
	}
	var out []governance.BudgetEntry
	for _, b := range cfg.Budgets {
		out = append(out, governance.BudgetEntry{Identity: ids[b.Identity], Key: b.Key,
			Budget: policy.Budget{Rate: b.Rate, Burst: b.Burst, Volume: b.Volume, Window: b.Window}})
	}
	return out
}

// governanceLoop flushes budget refusal histories periodically and once
// more when the daemon stops (spend and freezes are durable as they
// happen). Proposals whose time-lock has passed are executed by the
// scheduler (replica.go).
func (d *Daemon) governanceLoop(ctx context.Context) {
	every := d.opts.GovernanceInterval
	if every <= 0 {
		every = defaultGovernanceInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := d.Gov.FlushBudgets(ctx); err != nil {
				d.log.Error("persisting budget state failed", "err", err)
			}
		}
	}
}

// sealHooks adapts the seal service to governance's sealed-start hooks.
type sealHooks struct{ s *sealsvc.Service }

func (h sealHooks) Ceremony(ctx context.Context, threshold int, officers []governance.SealOfficer) (governance.PINRotation, error) {
	co := make([]sealsvc.CeremonyOfficer, len(officers))
	for i, o := range officers {
		co[i] = sealsvc.CeremonyOfficer{Name: o.Name, SigningKey: o.SigningKey, ShareKey: o.ShareKey}
	}
	return h.s.Ceremony(ctx, threshold, co)
}

func (h sealHooks) StartRekey(ctx context.Context, proposalID string, officers quorum.OfficerSet, pl quorum.RekeySeal) error {
	return h.s.StartRekey(ctx, proposalID, officers, pl)
}
