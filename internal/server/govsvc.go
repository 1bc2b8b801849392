package server

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/governance"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
)

// governanceService adapts custody.v1.GovernanceService onto package
// governance: it translates messages and leaves every decision and every
// state change to governance (who may call what is in Methods).
type governanceService struct {
	custodyv1.UnimplementedGovernanceServiceServer
	s *Server
}

func (g governanceService) gov() *governance.Governance { return g.s.gov }

// InitCeremony implements GovernanceService.
func (g governanceService) InitCeremony(ctx context.Context, req *custodyv1.InitCeremonyRequest) (*custodyv1.CeremonyTranscript, error) {
	c := callFrom(ctx)
	cr := governance.CeremonyRequest{Threshold: int(req.GetThreshold()), AllowDev: req.GetAllowDev()}
	for i, o := range req.GetOfficers() {
		off := quorum.Officer{Name: o.GetName(), PublicKey: o.GetPublicKeyDer()}
		if err := off.Validate(); err != nil {
			return nil, fmt.Errorf("%w: officers[%d]: %v", ErrInvalidArgument, i, err)
		}
		if fp := o.GetFingerprint(); fp != "" && fp != off.Fingerprint() {
			return nil, fmt.Errorf("%w: officers[%d].fingerprint: does not match the public key", ErrInvalidArgument, i)
		}
		cr.Officers = append(cr.Officers, off)
		cr.ShareKeys = append(cr.ShareKeys, o.GetSharePublicKeyDer())
	}
	if !slices.ContainsFunc(cr.ShareKeys, func(k []byte) bool { return len(k) > 0 }) {
		cr.ShareKeys = nil // none given: the governance layer decides whether that is allowed
	}
	for i, k := range req.GetKeys() {
		p, err := PurposeFromProto(k.GetPurpose())
		if err != nil {
			return nil, fmt.Errorf("keys[%d].purpose: %w", i, err)
		}
		cr.Keys = append(cr.Keys, governance.CeremonyKey{Name: k.GetName(), Purpose: p, Description: k.GetDescription()})
	}
	for _, pg := range req.GetGrants() {
		cr.Grants = append(cr.Grants, grantFromProto(pg))
	}
	for _, pb := range req.GetBudgets() {
		cr.Budgets = append(cr.Budgets, budgetFromProto(pb))
	}
	tr, summary, err := g.gov().InitCeremony(ctx, c.actor(), cr)
	if err != nil {
		return nil, err
	}
	c.detail = summary
	return transcriptProto(tr), nil
}

func transcriptProto(tr *governance.StoredTranscript) *custodyv1.CeremonyTranscript {
	return &custodyv1.CeremonyTranscript{Json: tr.JSON, Text: tr.Text, Signature: tr.Signature, AuditPublicKeyDer: tr.AuditDER}
}

// GetCeremonyTranscript implements GovernanceService.
func (g governanceService) GetCeremonyTranscript(ctx context.Context, _ *custodyv1.GetCeremonyTranscriptRequest) (*custodyv1.CeremonyTranscript, error) {
	tr, err := g.gov().Transcript()
	if err != nil {
		return nil, err
	}
	return transcriptProto(tr), nil
}

func grantFromProto(p *custodyv1.Grant) policy.Grant {
	g := policy.Grant{ID: p.GetId(), Identity: p.GetIdentity(), Key: p.GetKey(), ContextMatch: p.GetContextMatch(),
		RecipientKeys: p.GetRecipientKeySha256(), AllowPlaintext: p.GetAllowPlaintext(), SPKI: p.GetSpkiSha256()}
	for _, op := range p.GetOperations() {
		g.Operations = append(g.Operations, policy.Op(op))
	}
	if len(g.ContextMatch) == 0 {
		g.ContextMatch = nil
	}
	return g
}

func grantToProto(g policy.Grant) *custodyv1.Grant {
	out := &custodyv1.Grant{Id: g.ID, Identity: g.Identity, Key: g.Key, ContextMatch: g.ContextMatch,
		RecipientKeySha256: g.RecipientKeys, AllowPlaintext: g.AllowPlaintext, SpkiSha256: g.SPKI}
	for _, op := range g.Operations {
		out.Operations = append(out.Operations, string(op))
	}
	return out
}

func budgetFromProto(p *custodyv1.Budget) governance.BudgetEntry {
	return governance.BudgetEntry{Identity: p.GetIdentity(), Key: p.GetKey(), Budget: policy.Budget{
		Rate: p.GetRate(), Burst: int(p.GetBurst()), Volume: p.GetVolume(), Window: p.GetWindow().AsDuration()}}
}

// Propose implements GovernanceService. The proposer recorded is always the
// caller's identity (governance refuses a proposal naming anyone else).
func (g governanceService) Propose(ctx context.Context, req *custodyv1.ProposeRequest) (*custodyv1.ProposalInfo, error) {
	c := callFrom(ctx)
	v, err := g.gov().Propose(ctx, c.actor(), req.GetCanonicalProposal())
	if err != nil {
		return nil, err
	}
	c.detail = "propose " + v.Proposal.ID + " " + string(v.Proposal.Kind)
	return proposalInfo(v), nil
}

// GetProposal implements GovernanceService.
func (g governanceService) GetProposal(ctx context.Context, req *custodyv1.GetProposalRequest) (*custodyv1.ProposalInfo, error) {
	v, err := g.gov().Proposal(req.GetId())
	if err != nil {
		return nil, err
	}
	return proposalInfo(v), nil
}

var stateToProtoGov = map[quorum.State]custodyv1.ProposalState{
	quorum.StatePending:    custodyv1.ProposalState_PROPOSAL_PENDING,
	quorum.StateTimeLocked: custodyv1.ProposalState_PROPOSAL_TIME_LOCKED,
	quorum.StateReady:      custodyv1.ProposalState_PROPOSAL_READY,
	quorum.StateExecuted:   custodyv1.ProposalState_PROPOSAL_EXECUTED,
	quorum.StateVetoed:     custodyv1.ProposalState_PROPOSAL_VETOED,
	quorum.StateExpired:    custodyv1.ProposalState_PROPOSAL_EXPIRED,
}

func proposalInfo(v governance.ProposalView) *custodyv1.ProposalInfo {
	p := v.Proposal
	out := &custodyv1.ProposalInfo{
		Id: p.ID, Kind: string(p.Kind), Digest: v.Digest, CanonicalProposal: v.Canonical, Summary: v.Summary,
		State: stateToProtoGov[v.Status.State], Threshold: uint32(v.Status.Threshold), Widening: v.Status.Widening,
		Expires: timestamppb.New(p.Expires), Proposer: p.Proposer, CreateTime: timestamppb.New(p.Created),
		Approvals: v.Approvals, VetoedBy: v.VetoedBy, Result: v.Result,
	}
	if !v.Status.Until.IsZero() {
		out.TimeLockUntil = timestamppb.New(v.Status.Until)
	}
	if !v.ExecutedAt.IsZero() {
		out.ExecutedTime = timestamppb.New(v.ExecutedAt)
	}
	if v.Failed && v.Result != "" {
		out.State = custodyv1.ProposalState_PROPOSAL_FAILED
	}
	return out
}

// maxProposalPage bounds ListProposals pages.
const maxProposalPage = 100

// ListProposals implements GovernanceService.
func (g governanceService) ListProposals(ctx context.Context, req *custodyv1.ListProposalsRequest) (*custodyv1.ListProposalsResponse, error) {
	size := int(req.GetPageSize())
	if size < 0 {
		return nil, fmt.Errorf("%w: page_size must not be negative", ErrInvalidArgument)
	}
	if size == 0 || size > maxProposalPage {
		size = maxProposalPage
	}
	views, err := g.gov().Proposals()
	if err != nil {
		return nil, err
	}
	out := &custodyv1.ListProposalsResponse{}
	started := req.GetPageToken() == ""
	for _, v := range views {
		if !started {
			started = v.Proposal.ID == req.GetPageToken()
			continue
		}
		info := proposalInfo(v)
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

// Approve implements GovernanceService. The caller holds the officer role
// (mTLS) and the signature must verify under the named officer's key; the
// two need not be the same person. A proposal that becomes ready executes
// before the answer.
func (g governanceService) Approve(ctx context.Context, req *custodyv1.ApproveRequest) (*custodyv1.ProposalInfo, error) {
	c := callFrom(ctx)
	c.detail = fmt.Sprintf("proposal %s officer %s", req.GetId(), req.GetOfficer())
	v, err := g.gov().Approve(ctx, c.actor(), req.GetId(), req.GetOfficer(), req.GetSignature())
	if err != nil {
		return nil, err
	}
	if err := g.anchor(ctx, req.GetId()); err != nil {
		return nil, err
	}
	return proposalInfo(v), nil
}

// anchor makes the governance state an approval or veto left durable on
// the HSM token before the officer is answered (Options.Anchor).
func (g governanceService) anchor(ctx context.Context, id string) error {
	if g.s.anchor == nil {
		return nil
	}
	if err := g.s.anchor(ctx); err != nil {
		return fmt.Errorf("%w: proposal %s was acted on, but the HSM token's audit mark could not be brought up to it (%v): check its state with proposal show before acting again", hsm.ErrUnavailable, id, err)
	}
	return nil
}

// Veto implements GovernanceService.
func (g governanceService) Veto(ctx context.Context, req *custodyv1.VetoRequest) (*custodyv1.ProposalInfo, error) {
	c := callFrom(ctx)
	c.detail = fmt.Sprintf("proposal %s officer %s", req.GetId(), req.GetOfficer())
	v, err := g.gov().Veto(ctx, c.actor(), req.GetId(), req.GetOfficer(), req.GetSignature())
	if err != nil {
		return nil, err
	}
	if err := g.anchor(ctx, req.GetId()); err != nil {
		return nil, err
	}
	return proposalInfo(v), nil
}

// ListOfficers implements GovernanceService.
func (g governanceService) ListOfficers(ctx context.Context, _ *custodyv1.ListOfficersRequest) (*custodyv1.ListOfficersResponse, error) {
	snap := callFrom(ctx).snap
	if !snap.Ceremony() {
		return nil, governance.ErrNoCeremony
	}
	set := snap.Officers()
	officers := slices.Clone(set.Officers)
	slices.SortFunc(officers, func(a, b quorum.Officer) int { return strings.Compare(a.Name, b.Name) })
	out := &custodyv1.ListOfficersResponse{Threshold: uint32(set.Threshold)}
	for _, o := range officers {
		out.Officers = append(out.Officers, &custodyv1.Officer{Name: o.Name, Fingerprint: o.Fingerprint(), PublicKeyDer: o.PublicKey})
	}
	return out, nil
}

// ListGrants implements GovernanceService: the grants in force.
func (g governanceService) ListGrants(ctx context.Context, req *custodyv1.ListGrantsRequest) (*custodyv1.ListGrantsResponse, error) {
	out := &custodyv1.ListGrantsResponse{}
	for _, gr := range callFrom(ctx).snap.Grants() {
		if (req.GetIdentity() == "" || req.GetIdentity() == gr.Identity) && (req.GetKey() == "" || req.GetKey() == gr.Key) {
			out.Grants = append(out.Grants, grantToProto(gr))
		}
	}
	return out, nil
}

// ListBudgets implements GovernanceService: the budgets in force, with
// whether each identity is frozen.
func (g governanceService) ListBudgets(ctx context.Context, req *custodyv1.ListBudgetsRequest) (*custodyv1.ListBudgetsResponse, error) {
	out := &custodyv1.ListBudgetsResponse{}
	for _, b := range g.gov().BudgetUses() {
		if req.GetKey() != "" && req.GetKey() != b.Key {
			continue
		}
		pb := &custodyv1.Budget{Identity: b.Identity, Key: b.Key, Rate: b.Budget.Rate,
			Burst: uint32(b.Budget.Burst), Volume: b.Budget.Volume, Window: durationpb.New(b.Budget.Window), Frozen: b.Usage.Frozen}
		if b.Known {
			pb.WindowUsed, pb.WindowEnd, pb.Available = b.Usage.WindowUsed, timestamppb.New(b.Usage.WindowEnd), b.Usage.Available
		}
		out.Budgets = append(out.Budgets, pb)
	}
	return out, nil
}

// ListDisclosureOrders implements GovernanceService.
func (g governanceService) ListDisclosureOrders(ctx context.Context, req *custodyv1.ListDisclosureOrdersRequest) (*custodyv1.ListDisclosureOrdersResponse, error) {
	now := g.s.now()
	out := &custodyv1.ListDisclosureOrdersResponse{}
	for _, o := range callFrom(ctx).snap.Orders() {
		ended := o.Used >= o.MaxUses || !now.Before(o.NotAfter)
		if ended && !req.GetIncludeEnded() {
			continue
		}
		out.Orders = append(out.Orders, &custodyv1.DisclosureOrder{CaseRef: o.CaseRef, Key: o.Key, ContextMatch: o.ContextMatch,
			Recipient: o.Recipient, MaxUses: uint32(o.MaxUses), NotAfter: timestamppb.New(o.NotAfter), Used: uint32(o.Used)})
	}
	return out, nil
}
