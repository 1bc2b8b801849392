package daemon

import (
	"context"
	"crypto"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/server"
)

// defaultGovernanceInterval is how often time-locked proposals that have
// become ready are executed and the budget state is persisted.
const defaultGovernanceInterval = time.Second

// openGovernance loads the governance state from the authenticated store
// and installs the policy and budgets it implies. A store whose governance
// records fail authentication stops start-up.
func (d *Daemon) openGovernance(ctx context.Context, reg prometheus.Registerer, pol *policy.Policy, signer crypto.Signer) error {
	instance, _ := os.Hostname()
	gov := d.cfg.Governance
	g, err := server.NewGovernance(ctx, d.Server, server.GovernanceOptions{
		Store: d.Store, Signer: signer, Identities: pol.Spec().Identities,
		TimeLock: gov.TimeLock, ProposalTTL: gov.ProposalTTL,
		Freeze: policy.FreezeRule{Refusals: gov.Freeze.Refusals, Within: gov.Freeze.Within},
		// Outside dev mode the vault is governed from its first start: keys,
		// grants and budgets come only from the key ceremony and proposals.
		QuorumRequired: gov.QuorumRequired || !d.cfg.Dev, AllowDev: d.cfg.Dev, Instance: "custodyd@" + instance,
		Seal: d.Seal, // the ceremony's PIN rotation and rekey by quorum (internal/sealsvc)
	})
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

// governanceLoop executes proposals whose time-lock has passed and
// persists the budget state, periodically, promptly after a freeze, and
// once more when the daemon stops, so a restart neither refills budgets
// nor lifts freezes.
func (d *Daemon) governanceLoop(ctx context.Context) {
	every := d.opts.GovernanceInterval
	if every <= 0 {
		every = defaultGovernanceInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	persist := func(ctx context.Context) {
		if err := d.Gov.PersistLimiter(ctx); err != nil {
			d.log.Error("persisting budget state failed", "err", err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			persist(fctx)
			cancel()
			return
		case <-d.Gov.Kicked():
			persist(ctx)
		case <-t.C:
			if n, err := d.Gov.ExecuteReady(ctx); err != nil {
				d.log.Error("executing ready proposals failed", "err", err)
			} else if n > 0 {
				d.log.Info("executed proposals after their time-lock", "count", n)
			}
			persist(ctx)
		}
	}
}
