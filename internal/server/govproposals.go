package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
)

// Propose implements GovernanceService.
func (g *Governance) Propose(ctx context.Context, req *custodyv1.ProposeRequest) (*custodyv1.ProposalInfo, error) {
	if err := g.s.authorizeAdmin(ctx, policy.OpPropose); err != nil {
		return nil, err
	}
	p, err := quorum.ParseCanonical(req.GetCanonicalProposal())
	if err != nil {
		return nil, err
	}
	c := callFrom(ctx)
	c.detail = fmt.Sprintf("propose %s %s", p.ID, p.Kind)
	if p.Expires.Sub(p.Created) > g.o.ProposalTTL {
		return nil, fmt.Errorf("%w: expires: a proposal may live at most %s", quorum.ErrInvalidProposal, g.o.ProposalTTL)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	l, err := g.requireLedger()
	if err != nil {
		return nil, err
	}
	if err := g.precheck(p); err != nil {
		return nil, err
	}
	before := l.Snapshot()
	if err := l.Propose(p, g.current(), g.s.now()); err != nil {
		return nil, err
	}
	if err := g.commitLedger(ctx, before); err != nil {
		return nil, err
	}
	return g.info(p.ID)
}

// precheck refuses proposals that could never execute, so officers are not
// asked to sign them. Called with g.mu held.
func (g *Governance) precheck(p quorum.Proposal) error {
	switch pl := p.Payload.(type) {
	case quorum.CreateKey:
		if _, err := keys.ParsePurpose(pl.Algorithm); err != nil {
			return fmt.Errorf("%w: create-key.algorithm: %v", quorum.ErrInvalidProposal, err)
		}
		if err := keys.ValidateName(pl.Name); err != nil {
			return fmt.Errorf("%w: create-key.name: %v", quorum.ErrInvalidProposal, err)
		}
	case quorum.AddGrant:
		if !g.isRelay(pl.Grant.Identity) {
			return fmt.Errorf("%w: add-grant.grant.identity: %q is not a configured relay identity (configure it first, or the grant would never apply)", quorum.ErrInvalidProposal, pl.Grant.Identity)
		}
		if _, err := g.buildPolicy(append(slices.Clone(g.st.Grants), pl.Grant)); err != nil {
			return fmt.Errorf("%w: add-grant: %v", quorum.ErrInvalidProposal, err)
		}
	case quorum.DisclosureOrder:
		if !pl.Order.NotAfter.After(g.s.now()) {
			return fmt.Errorf("%w: disclosure-order.not_after: in the past", quorum.ErrInvalidProposal)
		}
		if !g.isRelay(pl.Order.Recipient) {
			return fmt.Errorf("%w: disclosure-order.order.recipient: not a configured relay identity", quorum.ErrInvalidProposal)
		}
	}
	return nil
}

// isRelay reports whether identity is configured with the relay role.
func (g *Governance) isRelay(identity string) bool {
	return slices.ContainsFunc(g.o.Identities, func(id policy.Identity) bool {
		return id.ID == identity && slices.Contains(id.Roles, policy.RoleRelay)
	})
}

// commitLedger persists the ledger after a change, or restores it to
// before if that fails, so memory never runs ahead of the store. Called
// with g.mu held.
func (g *Governance) commitLedger(ctx context.Context, before quorum.LedgerState) error {
	next := g.st.clone()
	ls := g.ledger.Snapshot()
	next.Ledger = &ls
	if err := g.persist(ctx, next); err != nil {
		if l, rerr := quorum.RestoreLedger(before); rerr == nil {
			g.ledger = l
		}
		return err
	}
	g.st = next
	return nil
}

// GetProposal implements GovernanceService.
func (g *Governance) GetProposal(ctx context.Context, req *custodyv1.GetProposalRequest) (*custodyv1.ProposalInfo, error) {
	if err := g.s.authorizeAdmin(ctx, policy.OpGovernanceRead); err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, err := g.requireLedger(); err != nil {
		return nil, err
	}
	return g.info(req.GetId())
}

var stateToProtoGov = map[quorum.State]custodyv1.ProposalState{
	quorum.StatePending:    custodyv1.ProposalState_PROPOSAL_PENDING,
	quorum.StateTimeLocked: custodyv1.ProposalState_PROPOSAL_TIME_LOCKED,
	quorum.StateReady:      custodyv1.ProposalState_PROPOSAL_READY,
	quorum.StateExecuted:   custodyv1.ProposalState_PROPOSAL_EXECUTED,
	quorum.StateVetoed:     custodyv1.ProposalState_PROPOSAL_VETOED,
	quorum.StateExpired:    custodyv1.ProposalState_PROPOSAL_EXPIRED,
}

// info renders one proposal. Called with g.mu held.
func (g *Governance) info(id string) (*custodyv1.ProposalInfo, error) {
	r, ok := g.record(id)
	if !ok {
		return nil, fmt.Errorf("%w: proposal %q", ErrGovNotFound, id)
	}
	return g.recordInfo(r)
}

func (g *Governance) recordInfo(r quorum.Record) (*custodyv1.ProposalInfo, error) {
	p := r.Proposal
	st, err := g.ledger.Status(p, g.s.now())
	if err != nil {
		return nil, err
	}
	canon, err := p.CanonicalBytes()
	if err != nil {
		return nil, err
	}
	d, _ := p.Digest()
	out := &custodyv1.ProposalInfo{
		Id: p.ID, Kind: string(p.Kind), Digest: d.String(), CanonicalProposal: canon, Summary: summary(p),
		State: stateToProtoGov[st.State], Threshold: uint32(st.Threshold), Widening: st.Widening,
		Expires: timestamppb.New(p.Expires), Proposer: p.Proposer, CreateTime: timestamppb.New(p.Created),
	}
	officers := g.ledger.Officers()
	for _, a := range r.Approvals {
		if o, ok := officers.Lookup(a.Officer); ok && string(o.PublicKey) == string(a.PublicKey) {
			out.Approvals = append(out.Approvals, a.Officer)
		}
	}
	if !st.Until.IsZero() {
		out.TimeLockUntil = timestamppb.New(st.Until)
	}
	if !r.ExecutedAt.IsZero() {
		out.ExecutedTime = timestamppb.New(r.ExecutedAt)
	}
	if r.Veto != nil {
		out.VetoedBy = r.Veto.Officer
	}
	if res, ok := g.st.Results[p.ID]; ok {
		out.Result = res.Detail
		if !res.OK {
			out.State = custodyv1.ProposalState_PROPOSAL_FAILED
		}
	}
	return out, nil
}

// ListProposals implements GovernanceService.
func (g *Governance) ListProposals(ctx context.Context, req *custodyv1.ListProposalsRequest) (*custodyv1.ListProposalsResponse, error) {
	if err := g.s.authorizeAdmin(ctx, policy.OpGovernanceRead); err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	if size < 0 {
		return nil, fmt.Errorf("%w: page_size must not be negative", ErrInvalidArgument)
	}
	if size == 0 || size > s100 {
		size = s100
	}
	g.mu.Lock()
	defer g.mu.Unlock()
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
	out := &custodyv1.ListProposalsResponse{}
	started := req.GetPageToken() == ""
	for _, r := range recs {
		if !started {
			started = r.Proposal.ID == req.GetPageToken()
			continue
		}
		info, err := g.recordInfo(r)
		if err != nil {
			return nil, err
		}
		if req.GetState() != custodyv1.ProposalState_PROPOSAL_STATE_UNSPECIFIED && info.GetState() != req.GetState() {
			continue
		}
		if len(out.Proposals) == size {
			out.NextPageToken = out.Proposals[size-1].GetId()
			break
		}
		out.Proposals = append(out.Proposals, info)
	}
	if !started {
		return nil, fmt.Errorf("%w: bad page_token", ErrInvalidArgument)
	}
	return out, nil
}

const s100 = 100

// decision loads the proposal an approval or veto is about. Called with
// g.mu held.
func (g *Governance) proposal(ctx context.Context, id, officer string) (quorum.Proposal, error) {
	c := callFrom(ctx)
	c.detail = fmt.Sprintf("proposal %s officer %s", id, officer)
	if _, err := g.requireLedger(); err != nil {
		return quorum.Proposal{}, err
	}
	r, ok := g.record(id)
	if !ok {
		return quorum.Proposal{}, fmt.Errorf("%w: proposal %q", ErrGovNotFound, id)
	}
	return r.Proposal, nil
}

// Approve implements GovernanceService. The caller must hold the officer
// role (mTLS) and the signature must verify under the named officer's key;
// the two need not be the same person. A proposal that becomes ready
// executes before the answer.
func (g *Governance) Approve(ctx context.Context, req *custodyv1.ApproveRequest) (*custodyv1.ProposalInfo, error) {
	if err := g.s.authorizeAdmin(ctx, policy.OpApprove); err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	p, err := g.proposal(ctx, req.GetId(), req.GetOfficer())
	if err != nil {
		return nil, err
	}
	before := g.ledger.Snapshot()
	st, err := g.ledger.Approve(p, req.GetOfficer(), req.GetSignature(), g.s.now())
	if err != nil {
		return nil, err
	}
	if err := g.commitLedger(ctx, before); err != nil {
		return nil, err
	}
	if st.State == quorum.StateReady {
		if err := g.execute(ctx, p); err != nil {
			return nil, err
		}
	}
	return g.info(p.ID)
}

// Veto implements GovernanceService.
func (g *Governance) Veto(ctx context.Context, req *custodyv1.VetoRequest) (*custodyv1.ProposalInfo, error) {
	if err := g.s.authorizeAdmin(ctx, policy.OpVeto); err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	p, err := g.proposal(ctx, req.GetId(), req.GetOfficer())
	if err != nil {
		return nil, err
	}
	before := g.ledger.Snapshot()
	if err := g.ledger.Veto(p, req.GetOfficer(), req.GetSignature(), g.s.now()); err != nil {
		return nil, err
	}
	if err := g.commitLedger(ctx, before); err != nil {
		return nil, err
	}
	return g.info(p.ID)
}

// ExecuteReady executes every proposal whose time-lock has passed. The
// daemon calls it periodically; it returns how many executed.
func (g *Governance) ExecuteReady(ctx context.Context) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ledger == nil {
		return 0, nil
	}
	n := 0
	now := g.s.now()
	for _, r := range g.ledger.Snapshot().Records {
		st, err := g.ledger.Status(r.Proposal, now)
		if err != nil || st.State != quorum.StateReady {
			continue
		}
		if err := g.execute(ctx, r.Proposal); err != nil {
			return n, err
		}
		n++
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
	now := g.s.now()
	for _, r := range g.ledger.Snapshot().Records {
		if st, err := g.ledger.Status(r.Proposal, now); err == nil && st.State == quorum.StateTimeLocked {
			n++
		}
	}
	return n
}

// execute carries out a Ready proposal, at most once. Changes to the
// governance state (grants, budgets, officers, orders) are persisted in the
// same write that marks the proposal executed, and take effect only after
// it. Key changes happen in the HSM and registry, which persist themselves:
// the proposal is marked executed (result "executing") first, so a crash
// mid-way can never run it twice. Called with g.mu held.
func (g *Governance) execute(ctx context.Context, p quorum.Proposal) error {
	now := g.s.now()
	before := g.ledger.Snapshot()
	next := g.st.clone()
	var (
		effect   func() // installs in-memory state after the write
		external func(context.Context) error
		refuse   error
		newSet   *quorum.OfficerSet
	)
	lim := g.s.limiter.Load()
	switch pl := p.Payload.(type) {
	case quorum.CreateKey:
		purpose, err := keys.ParsePurpose(pl.Algorithm)
		refuse = err
		external = func(ctx context.Context) error {
			_, err := g.s.keys.Create(ctx, pl.Name, purpose, "created by proposal "+p.ID)
			return err
		}
	case quorum.RotateKey:
		external = func(ctx context.Context) error { _, err := g.s.keys.Rotate(ctx, pl.Name); return err }
	case quorum.EnableVersion:
		external = func(ctx context.Context) error {
			_, err := g.s.keys.Enable(ctx, pl.Name, uint32(pl.Version))
			return err
		}
	case quorum.DisableVersion:
		external = func(ctx context.Context) error {
			_, err := g.s.keys.Disable(ctx, pl.Name, uint32(pl.Version))
			return err
		}
	case quorum.DestroyKey:
		external = func(ctx context.Context) error { return g.destroy(ctx, pl) }
	case quorum.AddGrant:
		if slices.ContainsFunc(next.Grants, func(gr policy.Grant) bool { return gr.ID == pl.Grant.ID }) {
			refuse = fmt.Errorf("grant %q already exists", pl.Grant.ID)
			break
		}
		next.Grants = append(next.Grants, pl.Grant)
	case quorum.RemoveGrant:
		i := slices.IndexFunc(next.Grants, func(gr policy.Grant) bool { return gr.ID == pl.GrantID })
		if i < 0 {
			refuse = fmt.Errorf("no grant %q", pl.GrantID)
			break
		}
		next.Grants = slices.Delete(next.Grants, i, i+1)
	case quorum.SetBudget:
		b := budgetEntry{Identity: pl.Identity, Key: pl.Key, Budget: pl.Budget}
		i := slices.IndexFunc(next.Budgets, func(o budgetEntry) bool { return o.Identity == b.Identity && o.Key == b.Key })
		if i < 0 {
			next.Budgets = append(next.Budgets, b)
		} else {
			next.Budgets[i] = b
		}
		effect = func() { _ = setBudget(lim, b, now) }
	case quorum.Unfreeze:
		if !lim.Frozen(pl.Identity, pl.Key) {
			refuse = fmt.Errorf("identity %q is not frozen on key %q", pl.Identity, pl.Key)
			break
		}
		effect = func() { _ = lim.Unfreeze(pl.Identity, pl.Key) }
	case quorum.AddOfficer, quorum.RemoveOfficer, quorum.SetThreshold:
		set := g.ledger.Officers()
		switch v := pl.(type) {
		case quorum.AddOfficer:
			set.Officers = append(set.Officers, v.Officer)
		case quorum.RemoveOfficer:
			i := slices.IndexFunc(set.Officers, func(o quorum.Officer) bool { return o.Name == v.Name })
			if i < 0 {
				refuse = fmt.Errorf("no officer %q", v.Name)
			} else {
				set.Officers = slices.Delete(set.Officers, i, i+1)
			}
		case quorum.SetThreshold:
			set.Threshold = v.Threshold
		}
		if refuse == nil {
			refuse = set.Validate(before.Options.AllowDev)
		}
		newSet = &set
	case quorum.DisclosureOrder:
		next.Orders = append(next.Orders, pl.Order)
	case quorum.RekeySeal:
		external = func(ctx context.Context) error { return g.rekeySeal(ctx, p.ID, pl) }
	default:
		refuse = fmt.Errorf("unsupported proposal kind %q", p.Kind)
	}
	var pol *policy.Policy
	if refuse == nil {
		var err error
		if pol, err = g.buildPolicy(next.Grants); err != nil {
			refuse = err
		}
	}
	if err := g.ledger.MarkExecuted(p, now); err != nil {
		return err
	}
	if refuse != nil {
		next = g.st.clone()
		next.Results[p.ID] = execResult{Detail: "failed: " + refuse.Error()}
		return g.commitExecuted(ctx, before, next, nil)
	}
	if newSet != nil {
		if err := g.ledger.SetOfficers(*newSet); err != nil {
			return err
		}
	}
	if external != nil {
		next.Results[p.ID] = execResult{OK: false, Detail: "executing (interrupted if this persists)"}
		if err := g.commitExecuted(ctx, before, next, nil); err != nil {
			return err
		}
		next = g.st.clone()
		if err := external(ctx); err != nil {
			next.Results[p.ID] = execResult{Detail: "failed: " + err.Error()}
		} else {
			next.Results[p.ID] = execResult{OK: true, Detail: "executed " + summary(p)}
		}
		return g.commitExecuted(ctx, g.ledger.Snapshot(), next, nil)
	}
	next.Results[p.ID] = execResult{OK: true, Detail: "executed " + summary(p)}
	var undo func()
	if effect != nil {
		// The limiter is part of the same write, so apply first and undo
		// from its snapshot if the write fails.
		snap := lim.Snapshot()
		effect()
		undo = func() {
			if l, err := policy.RestoreLimiter(snap); err == nil {
				g.s.limiter.Store(l)
			}
		}
	}
	if err := g.commitExecuted(ctx, before, next, undo); err != nil {
		return err
	}
	g.s.SetPolicy(pol)
	return nil
}

// commitExecuted persists next with the ledger as it is now; on failure it
// rolls the ledger back to before and runs undo.
func (g *Governance) commitExecuted(ctx context.Context, before quorum.LedgerState, next govState, undo func()) error {
	ls := g.ledger.Snapshot()
	next.Ledger = &ls
	if err := g.persist(ctx, next); err != nil {
		if l, rerr := quorum.RestoreLedger(before); rerr == nil {
			g.ledger = l
		}
		if undo != nil {
			undo()
		}
		return err
	}
	g.st = next
	return nil
}

// destroy schedules destruction of one version, or of every version not
// already destroyed or scheduled.
func (g *Governance) destroy(ctx context.Context, pl quorum.DestroyKey) error {
	wait := g.s.limits.DestroyWaitDefault
	if pl.Version > 0 {
		_, err := g.s.keys.ScheduleDestroy(ctx, pl.Name, uint32(pl.Version), wait)
		return err
	}
	e, err := g.s.keys.Get(pl.Name)
	if err != nil {
		return err
	}
	for _, v := range e.Key.Versions {
		if v.State == keys.StateDestroyed || v.State == keys.StateDestroyScheduled {
			continue
		}
		if _, err := g.s.keys.ScheduleDestroy(ctx, pl.Name, v.Number, wait); err != nil {
			return err
		}
	}
	return nil
}

// useOrder spends one use of a disclosure order that lets identity perform
// a decrypt or unwrap on key with encCtx. found is false when no order
// names identity on key at all, so the caller reports its own denial.
func (g *Governance) useOrder(ctx context.Context, identity, key string, encCtx map[string]string) (caseRef string, found bool, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.st.Ceremony {
		return "", false, nil
	}
	now := g.s.now()
	var firstErr error
	for i, o := range g.st.Orders {
		if o.Recipient != identity || o.Key != key {
			continue
		}
		found = true
		try := o
		if err := try.Use(identity, key, encCtx, now); err != nil {
			if firstErr == nil || errors.Is(firstErr, policy.ErrOrderExhausted) || errors.Is(firstErr, policy.ErrOrderExpired) {
				firstErr = err
			}
			continue
		}
		next := g.st.clone()
		next.Orders[i] = try
		if err := g.persist(ctx, next); err != nil {
			return "", true, err
		}
		g.st = next
		return o.CaseRef, true, nil
	}
	return "", found, firstErr
}

// ListOfficers implements GovernanceService.
func (g *Governance) ListOfficers(ctx context.Context, _ *custodyv1.ListOfficersRequest) (*custodyv1.ListOfficersResponse, error) {
	if err := g.s.authorizeAdmin(ctx, policy.OpGovernanceRead); err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, err := g.requireLedger(); err != nil {
		return nil, err
	}
	set := g.ledger.Officers()
	slices.SortFunc(set.Officers, func(a, b quorum.Officer) int { return strings.Compare(a.Name, b.Name) })
	out := &custodyv1.ListOfficersResponse{Threshold: uint32(set.Threshold)}
	for _, o := range set.Officers {
		out.Officers = append(out.Officers, &custodyv1.Officer{Name: o.Name, Fingerprint: o.Fingerprint(), PublicKeyDer: o.PublicKey})
	}
	return out, nil
}

// ListGrants implements GovernanceService: the grants in force.
func (g *Governance) ListGrants(ctx context.Context, req *custodyv1.ListGrantsRequest) (*custodyv1.ListGrantsResponse, error) {
	if err := g.s.authorizeAdmin(ctx, policy.OpGovernanceRead); err != nil {
		return nil, err
	}
	grants := g.s.Policy().Spec().Grants
	slices.SortFunc(grants, func(a, b policy.Grant) int { return strings.Compare(a.ID, b.ID) })
	out := &custodyv1.ListGrantsResponse{}
	for _, gr := range grants {
		if (req.GetIdentity() == "" || req.GetIdentity() == gr.Identity) && (req.GetKey() == "" || req.GetKey() == gr.Key) {
			out.Grants = append(out.Grants, grantToProto(gr))
		}
	}
	return out, nil
}

// ListBudgets implements GovernanceService.
func (g *Governance) ListBudgets(ctx context.Context, req *custodyv1.ListBudgetsRequest) (*custodyv1.ListBudgetsResponse, error) {
	if err := g.s.authorizeAdmin(ctx, policy.OpGovernanceRead); err != nil {
		return nil, err
	}
	g.mu.Lock()
	budgets := slices.Clone(g.st.Budgets)
	g.mu.Unlock()
	lim := g.s.limiter.Load()
	slices.SortFunc(budgets, func(a, b budgetEntry) int {
		if c := strings.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return strings.Compare(a.Identity, b.Identity)
	})
	out := &custodyv1.ListBudgetsResponse{}
	for _, b := range budgets {
		if req.GetKey() != "" && req.GetKey() != b.Key {
			continue
		}
		out.Budgets = append(out.Budgets, &custodyv1.Budget{Identity: b.Identity, Key: b.Key, Rate: b.Budget.Rate,
			Burst: uint32(b.Budget.Burst), Volume: b.Budget.Volume, Window: durationpb.New(b.Budget.Window),
			Frozen: b.Identity != "" && lim != nil && lim.Frozen(b.Identity, b.Key)})
	}
	return out, nil
}

// ListDisclosureOrders implements GovernanceService.
func (g *Governance) ListDisclosureOrders(ctx context.Context, req *custodyv1.ListDisclosureOrdersRequest) (*custodyv1.ListDisclosureOrdersResponse, error) {
	if err := g.s.authorizeAdmin(ctx, policy.OpGovernanceRead); err != nil {
		return nil, err
	}
	g.mu.Lock()
	orders := slices.Clone(g.st.Orders)
	g.mu.Unlock()
	now := g.s.now()
	slices.SortFunc(orders, func(a, b policy.Order) int { return a.NotAfter.Compare(b.NotAfter) })
	out := &custodyv1.ListDisclosureOrdersResponse{}
	for _, o := range orders {
		ended := o.Used >= o.MaxUses || !now.Before(o.NotAfter)
		if ended && !req.GetIncludeEnded() {
			continue
		}
		out.Orders = append(out.Orders, &custodyv1.DisclosureOrder{CaseRef: o.CaseRef, Key: o.Key, ContextMatch: o.ContextMatch,
			Recipient: o.Recipient, MaxUses: uint32(o.MaxUses), NotAfter: timestamppb.New(o.NotAfter), Used: uint32(o.Used)})
	}
	return out, nil
}

// disclosure applies a disclosure order to a decrypt or unwrap that the
// caller's grants refused. applies is false when no order names the caller
// on this key (the caller then reports the grant's denial). An order use is
// counted and persisted before the operation runs, and the request's audit
// record carries the order's case reference. The order replaces the budget:
// its own use count is the cap.
func (s *Server) disclosure(ctx context.Context, op policy.Op, key string, encCtx map[string]string, denial error) (d policy.Decision, applies bool, err error) {
	if s.gov == nil || (op != policy.OpDecrypt && op != policy.OpUnwrap) {
		return d, false, nil
	}
	if !errors.Is(denial, policy.ErrNotGranted) && !errors.Is(denial, policy.ErrContextMismatch) {
		return d, false, nil
	}
	c := callFrom(ctx)
	if c.role != policy.RoleRelay {
		return d, false, nil
	}
	ref, found, err := s.gov.useOrder(ctx, c.identity, key, encCtx)
	if !found {
		return d, false, nil
	}
	if err != nil {
		return d, true, err
	}
	c.caseRef = ref
	return policy.Decision{Identity: c.identity, Role: c.role, Op: op, Key: key, GrantID: "order:" + ref, AllowPlaintext: true}, true, nil
}
