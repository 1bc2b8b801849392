package governance

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/names"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
)

// ProposalView is one proposal as the API shows it.
type ProposalView struct {
	Proposal  quorum.Proposal
	Canonical []byte
	Digest    string
	Summary   string
	Status    quorum.Status
	// Approvals names the officers whose approvals count now.
	Approvals  []string
	ExecutedAt time.Time
	VetoedBy   string
	// Result of execution, and whether it failed.
	Result string
	Failed bool
}

// Summary renders what a proposal will do, with every untrusted string
// escaped (a terminal shows what is there, nothing hidden).
func Summary(p quorum.Proposal) string {
	b, err := json.Marshal(p.Payload)
	if err != nil {
		return string(p.Kind)
	}
	return names.Escape(fmt.Sprintf("%s %s", p.Kind, b))
}

// Limits on proposals. All of governance is one store value
// (store.MaxValueSize): without them one proposer (a single coerced officer
// or operator) could fill it with a few large proposals, after which no
// approval, veto, execution or order use could ever be persisted again.
const (
	// MaxProposalBytes bounds one proposal's canonical bytes.
	MaxProposalBytes = 16 << 10
	// MaxOpenProposals bounds the proposals of one proposer that have not
	// yet expired (pending, time-locked, executed or vetoed alike).
	MaxOpenProposals = 16
	// proposalSpace is how much of the state value proposals may fill; the
	// rest is kept for what is done with them.
	proposalSpace = store.MaxValueSize / 2
	// proposalRetention is how long a proposal's record is kept after it
	// expired (for proposal show) before it may be forgotten to make room.
	proposalRetention = 7 * 24 * time.Hour
)

// Propose records a proposal. Its proposer must be the caller's own
// authenticated identity: nobody files a proposal in another's name.
func (g *Governance) Propose(ctx context.Context, actor Actor, canonical []byte) (ProposalView, error) {
	if len(canonical) > MaxProposalBytes {
		return ProposalView{}, fmt.Errorf("%w: the proposal is %d bytes; at most %d are accepted", ErrInvalid, len(canonical), MaxProposalBytes)
	}
	p, err := quorum.ParseCanonical(canonical)
	if err != nil {
		return ProposalView{}, err
	}
	if p.Vault != g.vault {
		if p.Vault == "" {
			return ProposalView{}, fmt.Errorf("%w: the proposal names no vault; this vault is %s (make it with a custodyctl that names the vault)", ErrInvalid, g.vault)
		}
		return ProposalView{}, fmt.Errorf("%w: the proposal is for vault %s; this vault is %s: approvals given for another vault never count here", ErrInvalid, p.Vault, g.vault)
	}
	if p.Proposer != actor.Identity {
		return ProposalView{}, fmt.Errorf("%w: proposer %q is not the caller's identity %q: a proposal is filed in its proposer's own name",
			ErrInvalid, names.Escape(p.Proposer), actor.Identity)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.sync(ctx); err != nil {
		return ProposalView{}, err
	}
	if ttl := g.trust(g.st).ProposalTTL; p.Expires.Sub(p.Created) > ttl {
		return ProposalView{}, fmt.Errorf("%w: expires: a proposal may live at most %s", quorum.ErrInvalidProposal, ttl)
	}
	err = g.retry(ctx, func() error {
		l, err := g.requireLedger()
		if err != nil {
			return err
		}
		if err := g.precheck(p); err != nil {
			return err
		}
		before := l.Snapshot()
		now := g.o.Now()
		if n := openBy(before, p.Proposer, now); n >= MaxOpenProposals {
			return fmt.Errorf("%w: %s already has %d proposals that have not expired; at most %d", ErrFull, names.Escape(p.Proposer), n, MaxOpenProposals)
		}
		if err := l.Propose(p, g.current(), now); err != nil {
			return err
		}
		next := g.st.clone()
		if err := g.makeRoom(l, &next, now); err != nil {
			if rl, rerr := quorum.RestoreLedger(before); rerr == nil {
				g.ledger = rl
			}
			return err
		}
		if err := g.recordOrRestore(ctx, before, Event{Actor: actor, Action: "propose", Key: proposalKey(p), Detail: p.ID + " " + Summary(p)}); err != nil {
			return err
		}
		return g.commit(ctx, before, next)
	})
	if err != nil {
		return ProposalView{}, err
	}
	return g.view(p.ID)
}

// openBy counts proposer's proposals that have not expired at now.
func openBy(st quorum.LedgerState, proposer string, now time.Time) int {
	n := 0
	for _, r := range st.Records {
		if r.Proposal.Proposer == proposer && now.Before(r.Proposal.Expires) {
			n++
		}
	}
	return n
}

// makeRoom keeps the state (next, with the ledger l as it is now) within
// proposalSpace: if it is over, records of proposals that expired more than
// proposalRetention ago are forgotten (and their results with them); if it
// is still over, the change is refused with ErrFull. Called with g.mu held.
func (g *Governance) makeRoom(l *quorum.Ledger, next *State, now time.Time) error {
	size := func() int {
		op, err := g.stateOp(next)
		if err != nil {
			return store.MaxValueSize
		}
		return len(op.Value)
	}
	if size() <= proposalSpace {
		return nil
	}
	for _, id := range l.ForgetExpired(now.Add(-proposalRetention)) {
		delete(next.Results, id)
	}
	if n := size(); n > proposalSpace {
		return fmt.Errorf("%w: open proposals fill %d of the %d bytes governance keeps for them; wait for some to expire", ErrFull, n, proposalSpace)
	}
	return nil
}

// recordOrRestore writes ev, or puts the ledger back to before and fails.
// Called with g.mu held, after a ledger change was validated in memory and
// before it is persisted.
func (g *Governance) recordOrRestore(ctx context.Context, before quorum.LedgerState, ev Event) error {
	if err := g.record(ctx, ev); err != nil {
		if l, rerr := quorum.RestoreLedger(before); rerr == nil {
			g.ledger = l
		}
		return err
	}
	return nil
}

// proposalKey is the key a proposal is about, for the audit record.
func proposalKey(p quorum.Proposal) string {
	switch v := p.Payload.(type) {
	case quorum.CreateKey:
		return v.Name
	case quorum.RotateKey:
		return v.Name
	case quorum.EnableVersion:
		return v.Name
	case quorum.DisableVersion:
		return v.Name
	case quorum.DestroyKey:
		return v.Name
	case quorum.AddGrant:
		return v.Grant.Key
	case quorum.SetBudget:
		return v.Key
	case quorum.Unfreeze:
		return v.Key
	case quorum.DisclosureOrder:
		return v.Order.Key
	}
	return ""
}

// precheck refuses proposals that could never execute, so officers are not
// asked to sign them. Called with g.mu held.
func (g *Governance) precheck(p quorum.Proposal) error {
	switch pl := p.Payload.(type) {
	case quorum.CreateKey:
		if _, err := keys.ParsePurpose(pl.Algorithm); err != nil {
			return fmt.Errorf("%w: create-key.algorithm: %v", quorum.ErrInvalidProposal, err)
		}
	case quorum.AddGrant:
		if !g.isRelay(pl.Grant.Identity) {
			return fmt.Errorf("%w: add-grant.grant.identity: %q is not a configured relay identity (configure it first, or the grant would never apply)",
				quorum.ErrInvalidProposal, names.Escape(pl.Grant.Identity))
		}
		if g.o.Check != nil {
			if err := g.o.Check(pl.Grant); err != nil {
				return fmt.Errorf("%w: add-grant.grant: %v", quorum.ErrInvalidProposal, err)
			}
		}
		if _, err := g.build(State{Ceremony: true, Grants: append(slices.Clone(g.st.Grants), pl.Grant)}); err != nil {
			return fmt.Errorf("%w: add-grant: %v", quorum.ErrInvalidProposal, err)
		}
	case quorum.SetTrust:
		if !g.st.Ceremony {
			return fmt.Errorf("%w: set-trust: the key ceremony has not fixed any trust yet", quorum.ErrInvalidProposal)
		}
		if err := g.precheckTrust(pl); err != nil {
			return err
		}
	case quorum.DisclosureOrder:
		if !pl.Order.NotAfter.After(g.o.Now()) {
			return fmt.Errorf("%w: disclosure-order.not_after: in the past", quorum.ErrInvalidProposal)
		}
		if !g.isRelay(pl.Order.Recipient) {
			return fmt.Errorf("%w: disclosure-order.order.recipient: not a configured relay identity", quorum.ErrInvalidProposal)
		}
	}
	return nil
}

// Approve records an officer's signed approval. The caller holds the
// officer role (mTLS); the signature must verify under the named officer's
// key. The approval that completes the threshold decides, against the state
// in force now, whether the proposal widens access: if it does it waits out
// the time-lock, otherwise it executes before Approve returns.
//
// Through several replicas the approval is a compare-and-swap on the
// governance state, so each counts once, and the proposal executes on the
// one replica whose write marks it executed.
func (g *Governance) Approve(ctx context.Context, actor Actor, id, officer string, sig []byte) (ProposalView, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.sync(ctx); err != nil {
		return ProposalView{}, err
	}
	var ready bool
	err := g.retry(ctx, func() error {
		p, err := g.proposal(id)
		if err != nil {
			return err
		}
		before := g.ledger.Snapshot()
		st, err := g.ledger.Approve(p, officer, sig, g.o.Now(), g.current())
		if err != nil {
			return err
		}
		if err := g.recordOrRestore(ctx, before, Event{Actor: actor, Action: "approve", Key: proposalKey(p),
			Detail: fmt.Sprintf("%s by %s: %s", p.ID, officer, st)}); err != nil {
			return err
		}
		if err := g.commit(ctx, before, g.st.clone()); err != nil {
			return err
		}
		ready = st.State == quorum.StateReady
		return nil
	})
	if err != nil {
		return ProposalView{}, err
	}
	if ready {
		if err := g.executeReady(ctx, actor, id); err != nil {
			return ProposalView{}, err
		}
	}
	return g.view(id)
}

// executeReady executes proposal id if it is (still) ready: another
// replica may have executed it first. Called with g.mu held.
func (g *Governance) executeReady(ctx context.Context, actor Actor, id string) error {
	return g.retry(ctx, func() error {
		r, ok := g.recordOf(id)
		if !ok {
			return fmt.Errorf("%w: proposal %q", ErrNotFound, names.Escape(id))
		}
		st, err := g.ledger.Status(r.Proposal, g.o.Now())
		if err != nil || st.State != quorum.StateReady {
			return err // executed (or vetoed) elsewhere meanwhile
		}
		return g.execute(ctx, actor, r.Proposal)
	})
}

// Veto records an officer's signed veto; it is final.
func (g *Governance) Veto(ctx context.Context, actor Actor, id, officer string, sig []byte) (ProposalView, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.sync(ctx); err != nil {
		return ProposalView{}, err
	}
	err := g.retry(ctx, func() error {
		p, err := g.proposal(id)
		if err != nil {
			return err
		}
		before := g.ledger.Snapshot()
		if err := g.ledger.Veto(p, officer, sig, g.o.Now()); err != nil {
			return err
		}
		if err := g.recordOrRestore(ctx, before, Event{Actor: actor, Action: "veto", Key: proposalKey(p), Detail: p.ID + " by " + officer}); err != nil {
			return err
		}
		return g.commit(ctx, before, g.st.clone())
	})
	if err != nil {
		return ProposalView{}, err
	}
	return g.view(id)
}

// proposal finds a recorded proposal. Called with g.mu held.
func (g *Governance) proposal(id string) (quorum.Proposal, error) {
	if _, err := g.requireLedger(); err != nil {
		return quorum.Proposal{}, err
	}
	r, ok := g.recordOf(id)
	if !ok {
		return quorum.Proposal{}, fmt.Errorf("%w: proposal %q", ErrNotFound, names.Escape(id))
	}
	return r.Proposal, nil
}

func (g *Governance) recordOf(id string) (quorum.Record, bool) {
	return g.ledger.Record(id)
}

// ExecuteReady executes every proposal that is ready: time-locks that have
// matured, and proposals that reached their threshold without an approval
// (an officer-set change). Each execution is on the record under the
// System actor. It returns how many executed.
func (g *Governance) ExecuteReady(ctx context.Context) (int, error) {
	return g.ExecuteReadyVia(ctx, g.o.Store)
}

// ExecuteReadyVia is ExecuteReady with every write committed through c:
// in a cluster, the leadership of the one replica elected to run scheduled
// work, so that a replica that lost its leadership (and may not know it
// yet) changes nothing (store.ErrNotLeader). Each execution is also a
// compare-and-swap on the governance state, so a time-lock matures once.
func (g *Governance) ExecuteReadyVia(ctx context.Context, c Committer) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.via = c
	defer func() { g.via = g.o.Store }()
	if err := g.sync(ctx); err != nil {
		return 0, err
	}
	if g.ledger == nil {
		return 0, nil
	}
	n := 0
	for _, r := range g.ledger.Snapshot().Records {
		id := r.Proposal.ID
		executed := false
		err := g.retry(ctx, func() error {
			r, ok := g.recordOf(id)
			if !ok {
				return nil
			}
			// Only a proposal at its threshold has anything to decide or
			// run: the others cost no copy of the ledger (which every tick
			// would otherwise make once per proposal on record).
			if st, err := g.ledger.Status(r.Proposal, g.o.Now()); err != nil || st.State != quorum.StateReady {
				return nil
			}
			before := g.ledger.Snapshot()
			st, err := g.ledger.Decide(r.Proposal, g.current(), g.o.Now())
			if err != nil || st.State == quorum.StatePending {
				return nil
			}
			if !r.Decided && st.State == quorum.StateTimeLocked {
				// Decided just now: the lock starts, on the record.
				if err := g.recordOrRestore(ctx, before, Event{Actor: System, Action: "time-lock", Key: proposalKey(r.Proposal),
					Detail: fmt.Sprintf("%s widens access: %s", r.Proposal.ID, st)}); err != nil {
					return err
				}
				return g.commit(ctx, before, g.st.clone())
			}
			if st.State != quorum.StateReady {
				return nil
			}
			if err := g.execute(ctx, System, r.Proposal); err != nil {
				return err
			}
			executed = true
			return nil
		})
		if err != nil {
			return n, err
		}
		if executed {
			n++
		}
	}
	return n, nil
}

// PendingTimeLocks counts approved widening proposals waiting out their
// time-lock: each is a change an officer may want to veto.
func (g *Governance) PendingTimeLocks() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ledger == nil {
		return 0
	}
	n := 0
	now := g.o.Now()
	for _, r := range g.ledger.Snapshot().Records {
		if st, err := g.ledger.Status(r.Proposal, now); err == nil && st.State == quorum.StateTimeLocked {
			n++
		}
	}
	return n
}

// Proposal returns one proposal.
func (g *Governance) Proposal(id string) (ProposalView, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.sync(context.Background()); err != nil {
		return ProposalView{}, err
	}
	if _, err := g.requireLedger(); err != nil {
		return ProposalView{}, err
	}
	return g.view(id)
}

// Proposals returns every proposal, newest first.
func (g *Governance) Proposals() ([]ProposalView, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.sync(context.Background()); err != nil {
		return nil, err
	}
	if _, err := g.requireLedger(); err != nil {
		return nil, err
	}
	recs := g.ledger.Snapshot().Records
	slices.SortFunc(recs, func(a, b quorum.Record) int {
		if c := b.Proposal.Created.Compare(a.Proposal.Created); c != 0 {
			return c
		}
		return strings.Compare(a.Proposal.ID, b.Proposal.ID)
	})
	out := make([]ProposalView, 0, len(recs))
	for _, r := range recs {
		v, err := g.recordView(r)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// view renders one proposal. Called with g.mu held.
func (g *Governance) view(id string) (ProposalView, error) {
	r, ok := g.recordOf(id)
	if !ok {
		return ProposalView{}, fmt.Errorf("%w: proposal %q", ErrNotFound, names.Escape(id))
	}
	return g.recordView(r)
}

func (g *Governance) recordView(r quorum.Record) (ProposalView, error) {
	p := r.Proposal
	st, err := g.ledger.Status(p, g.o.Now())
	if err != nil {
		return ProposalView{}, err
	}
	if !r.Decided {
		st.Widening = quorum.Widening(p.Payload, g.current())
	}
	canon, err := p.CanonicalBytes()
	if err != nil {
		return ProposalView{}, err
	}
	d, _ := p.Digest()
	v := ProposalView{Proposal: p, Canonical: canon, Digest: d.String(), Summary: Summary(p), Status: st, ExecutedAt: r.ExecutedAt}
	officers := g.ledger.Officers()
	for _, a := range r.Approvals {
		if o, ok := officers.Lookup(a.Officer); ok && string(o.PublicKey) == string(a.PublicKey) {
			v.Approvals = append(v.Approvals, a.Officer)
		}
	}
	if r.Veto != nil {
		v.VetoedBy = r.Veto.Officer
	}
	if res, ok := g.st.Results[p.ID]; ok {
		v.Result, v.Failed = res.Detail, !res.OK
	}
	return v, nil
}
