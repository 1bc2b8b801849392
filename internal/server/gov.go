package server

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
)

// Governance errors. status.go maps them to codes.
var (
	// ErrRequiresProposal refuses a direct key or grant change once the
	// vault is governed: only an executed proposal may make it.
	ErrRequiresProposal = errors.New("requires an executed proposal")
	// ErrStateRolledBack: the token records a completed ceremony but the
	// store has no governance state (deleted or rolled back by someone with
	// the store file). custodyd refuses to serve rather than reopen the
	// ceremony.
	ErrStateRolledBack = errors.New("governance: the hsm records a completed key ceremony but the store has no governance state (store deleted, edited or rolled back); refusing to serve")
	// ErrCeremonyDone refuses a second key ceremony.
	ErrCeremonyDone = errors.New("governance: the key ceremony has already run")
	// ErrNoCeremony refuses governance actions before the ceremony.
	ErrNoCeremony = errors.New("governance: no key ceremony has run")
	// ErrGovNotFound reports a transcript or proposal that does not exist.
	ErrGovNotFound = errors.New("governance: not found")
)

// Store keys of the governance state. Every value is authenticated by the
// store's HSM sealer, so an edit made outside custodyd stops it at start.
const (
	govStateKey      = "gov/state"
	govLimiterKey    = "gov/limiter"
	govTranscriptKey = "gov/transcript"
)

// GovernanceOptions wire a Governance.
type GovernanceOptions struct {
	// Store is the authenticated store the state lives in (prefix "gov/").
	Store store.Store
	// Signer is the HSM audit key: it signs the ceremony transcript.
	Signer crypto.Signer
	// Identities and their roles, from configuration. Grants from the
	// governance state apply only to identities configured as relays.
	Identities []policy.Identity
	// TimeLock for widening proposals; ProposalTTL bounds a proposal's life.
	TimeLock, ProposalTTL time.Duration
	// Freeze is the sustained-breach rule of the budget limiter.
	Freeze policy.FreezeRule
	// QuorumRequired governs the vault even before the ceremony.
	QuorumRequired bool
	// AllowDev permits a ceremony with M = 1 (dev instances only).
	AllowDev bool
	// Instance names this custodyd in the transcript.
	Instance string
	// Seal replaces the PIN at the ceremony and on rekey (govseal.go).
	Seal SealHooks
}

// budgetEntry is one budget installed by the ceremony or a proposal.
type budgetEntry struct {
	Identity string        `json:"identity,omitempty"`
	Key      string        `json:"key"`
	Budget   policy.Budget `json:"budget"`
}

// execResult is the outcome of executing a proposal.
type execResult struct {
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// govState is everything governance persists in gov/state.
type govState struct {
	Ceremony bool                  `json:"ceremony"`
	Ledger   *quorum.LedgerState   `json:"ledger,omitempty"`
	Grants   []policy.Grant        `json:"grants"`
	Budgets  []budgetEntry         `json:"budgets"`
	Orders   []policy.Order        `json:"orders"`
	Results  map[string]execResult `json:"results"`
}

func (st govState) clone() govState {
	b, err := json.Marshal(st)
	if err != nil {
		panic("governance: state does not encode: " + err.Error())
	}
	var out govState
	if err := json.Unmarshal(b, &out); err != nil {
		panic("governance: state does not decode: " + err.Error())
	}
	if out.Results == nil {
		out.Results = map[string]execResult{}
	}
	return out
}

// storedTranscript is gov/transcript.
type storedTranscript struct {
	JSON      []byte `json:"json"`
	Text      string `json:"text"`
	Signature []byte `json:"signature"`
	AuditDER  []byte `json:"audit_der"`
}

// Governance implements GovernanceService: the key ceremony, the proposal
// ledger and the access state it produces (grants, budgets, officers,
// disclosure orders).
//
// Invariants: once the ceremony has run (or QuorumRequired), grants, budgets
// and keys change only when a proposal executes; every change is persisted
// to the authenticated store before it is reported or takes effect; a
// proposal executes at most once.
type Governance struct {
	custodyv1.UnimplementedGovernanceServiceServer

	s *Server
	o GovernanceOptions

	mu         sync.Mutex // guards everything below and serialises store writes
	st         govState
	ledger     *quorum.Ledger // nil before the ceremony
	transcript *storedTranscript
	lastLim    []byte
	kick       chan struct{}
}

// NewGovernance loads the governance state from the store (refusing one
// that fails authentication), installs the policy and budgets it implies
// into s, and attaches itself to s so Register serves GovernanceService.
func NewGovernance(ctx context.Context, s *Server, o GovernanceOptions) (*Governance, error) {
	if o.TimeLock <= 0 {
		o.TimeLock = quorum.DefaultTimeLock
	}
	if o.ProposalTTL <= o.TimeLock {
		o.ProposalTTL = o.TimeLock + 30*24*time.Hour
	}
	if o.Freeze == (policy.FreezeRule{}) {
		o.Freeze = policy.DefaultFreezeRule
	}
	g := &Governance{s: s, o: o, st: govState{Results: map[string]execResult{}}, kick: make(chan struct{}, 1)}
	if err := g.load(ctx); err != nil {
		return nil, err
	}
	s.gov = g
	return g, nil
}

func (g *Governance) load(ctx context.Context) error {
	kv, err := g.o.Store.Get(ctx, govStateKey)
	switch {
	case errors.Is(err, store.ErrNotFound):
		if g.ceremonyMarked(ctx) {
			return ErrStateRolledBack
		}
		return g.install(nil)
	case err != nil:
		return fmt.Errorf("governance state: %w", err)
	}
	if err := strictJSON(kv.Value, &g.st); err != nil {
		return fmt.Errorf("%w: governance state: %v", store.ErrCorrupt, err)
	}
	if g.st.Results == nil {
		g.st.Results = map[string]execResult{}
	}
	if !g.st.Ceremony {
		if g.ceremonyMarked(ctx) {
			return ErrStateRolledBack
		}
		return g.install(nil)
	}
	if err := g.markCeremony(ctx); err != nil {
		return err
	}
	if g.st.Ledger == nil {
		return fmt.Errorf("%w: governance state: ceremony recorded without a ledger", store.ErrCorrupt)
	}
	ls := *g.st.Ledger
	// The configured lock applies; RestoreLedger never shortens a pending one.
	ls.Options.TimeLock = g.o.TimeLock
	if g.ledger, err = quorum.RestoreLedger(ls); err != nil {
		return fmt.Errorf("governance ledger: %w", err)
	}
	tkv, err := g.o.Store.Get(ctx, govTranscriptKey)
	if err != nil {
		return fmt.Errorf("ceremony transcript: %w", err)
	}
	var tr storedTranscript
	if err := strictJSON(tkv.Value, &tr); err != nil {
		return fmt.Errorf("%w: ceremony transcript: %v", store.ErrCorrupt, err)
	}
	g.transcript = &tr
	lim, err := g.loadLimiter(ctx)
	if err != nil {
		return err
	}
	return g.install(lim)
}

func (g *Governance) loadLimiter(ctx context.Context) (*policy.Limiter, error) {
	kv, err := g.o.Store.Get(ctx, govLimiterKey)
	var lim *policy.Limiter
	switch {
	case errors.Is(err, store.ErrNotFound):
		if lim, err = policy.NewLimiter(g.o.Freeze); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, fmt.Errorf("budget state: %w", err)
	default:
		var ls policy.LimiterState
		if err := strictJSON(kv.Value, &ls); err != nil {
			return nil, fmt.Errorf("%w: budget state: %v", store.ErrCorrupt, err)
		}
		ls.Freeze = g.o.Freeze
		for i := range ls.Subjects {
			if n := len(ls.Subjects[i].Refusals); n > g.o.Freeze.Refusals {
				ls.Subjects[i].Refusals = ls.Subjects[i].Refusals[n-g.o.Freeze.Refusals:]
			}
		}
		if lim, err = policy.RestoreLimiter(ls); err != nil {
			return nil, fmt.Errorf("budget state: %w", err)
		}
		g.lastLim = kv.Value
	}
	// Budgets recorded in the state are authoritative; the limiter adds the
	// buckets' fill. Re-setting an existing budget keeps what was spent.
	now := g.s.now()
	for _, b := range g.st.Budgets {
		if err := setBudget(lim, b, now); err != nil {
			return nil, fmt.Errorf("budget %q on %q: %w", b.Identity, b.Key, err)
		}
	}
	return lim, nil
}

func setBudget(l *policy.Limiter, b budgetEntry, now time.Time) error {
	if b.Identity == "" {
		return l.SetKeyBudget(b.Key, b.Budget, now)
	}
	return l.SetBudget(b.Identity, b.Key, b.Budget, now)
}

// governed reports whether direct changes are refused.
func (g *Governance) governed() bool { return g.st.Ceremony || g.o.QuorumRequired }

// install puts the policy, limiter and governed flag implied by the state
// into the server. Called with g.mu held (or before serving).
func (g *Governance) install(lim *policy.Limiter) error {
	if !g.governed() {
		return nil // development: configuration roles and grants apply
	}
	p, err := g.buildPolicy(g.st.Grants)
	if err != nil {
		return err
	}
	if lim == nil && g.st.Ceremony {
		return errors.New("governance: no limiter")
	}
	if lim != nil {
		g.s.limiter.Store(lim)
	}
	g.s.SetPolicy(p)
	g.s.governed.Store(true)
	return nil
}

// buildPolicy makes the policy from configured identities and governance
// grants. A grant whose identity is no longer a configured relay is left
// out: configuration can narrow access, never widen it.
func (g *Governance) buildPolicy(grants []policy.Grant) (*policy.Policy, error) {
	relay := map[string]bool{}
	for _, id := range g.o.Identities {
		if slices.Contains(id.Roles, policy.RoleRelay) {
			relay[id.ID] = true
		}
	}
	spec := policy.Spec{Identities: g.o.Identities}
	for _, gr := range grants {
		if relay[gr.Identity] {
			spec.Grants = append(spec.Grants, gr)
		} else {
			g.s.log.Warn("governance grant skipped: identity is not a configured relay", "grant", gr.ID)
		}
	}
	return policy.New(spec)
}

// persist writes st (and the limiter's state) as one transaction.
func (g *Governance) persist(ctx context.Context, st govState, extra ...store.Op) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	ops := append([]store.Op{store.PutOp(govStateKey, b)}, extra...)
	var lim []byte
	if l := g.s.limiter.Load(); l != nil {
		if lim, err = json.Marshal(l.Snapshot()); err != nil {
			return err
		}
		ops = append(ops, store.PutOp(govLimiterKey, lim))
	}
	if err := g.o.Store.Txn(context.WithoutCancel(ctx), nil, ops); err != nil {
		return fmt.Errorf("persist governance state: %w", err)
	}
	if lim != nil {
		g.lastLim = lim
	}
	return nil
}

// PersistLimiter writes the budget state if it changed since last written,
// so a restart neither refills budgets nor lifts freezes. The daemon calls
// it periodically, after a freeze and at shutdown.
func (g *Governance) PersistLimiter(ctx context.Context) error {
	l := g.s.limiter.Load()
	if l == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	b, err := json.Marshal(l.Snapshot())
	if err != nil {
		return err
	}
	if bytes.Equal(b, g.lastLim) {
		return nil
	}
	if err := store.Put(ctx, g.o.Store, govLimiterKey, b); err != nil {
		return fmt.Errorf("persist budget state: %w", err)
	}
	g.lastLim = b
	return nil
}

// Kicked is signalled when the budget state should be persisted soon (an
// identity was frozen).
func (g *Governance) Kicked() <-chan struct{} { return g.kick }

func (g *Governance) kickPersist() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// current is what Widening compares a proposal with.
func (g *Governance) current() quorum.Current {
	budgets := slices.Clone(g.st.Budgets)
	return quorum.Current{
		Threshold: g.ledger.Officers().Threshold,
		Budget: func(identity, key string) (policy.Budget, bool) {
			for _, b := range budgets {
				if b.Identity == identity && b.Key == key {
					return b.Budget, true
				}
			}
			return policy.Budget{}, false
		},
	}
}

// ---- ceremony ----

// InitCeremony implements GovernanceService.
func (g *Governance) InitCeremony(ctx context.Context, req *custodyv1.InitCeremonyRequest) (*custodyv1.CeremonyTranscript, error) {
	if err := g.s.authorizeAdmin(ctx, policy.OpPropose); err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.st.Ceremony {
		return nil, ErrCeremonyDone
	}
	now := g.s.now().UTC()
	set, err := ceremonyOfficers(req, g.o.AllowDev)
	if err != nil {
		return nil, err
	}
	declared := map[string]keys.Purpose{}
	for i, k := range req.GetKeys() {
		p, err := PurposeFromProto(k.GetPurpose())
		if err != nil {
			return nil, fmt.Errorf("keys[%d].purpose: %w", i, err)
		}
		if err := keys.ValidateName(k.GetName()); err != nil {
			return nil, fmt.Errorf("%w: keys[%d].name: %v", ErrInvalidArgument, i, err)
		}
		if _, dup := declared[k.GetName()]; dup {
			return nil, fmt.Errorf("%w: keys[%d].name: duplicate", ErrInvalidArgument, i)
		}
		if _, err := g.s.keys.Get(k.GetName()); err == nil {
			return nil, fmt.Errorf("%w: keys[%d].name: %q already exists", keys.ErrKeyExists, i, k.GetName())
		}
		declared[k.GetName()] = p
	}
	var grants []policy.Grant
	for i, pg := range req.GetGrants() {
		gr := grantFromProto(pg)
		if err := gr.Validate(); err != nil {
			return nil, fmt.Errorf("%w: grants[%d]: %v", ErrInvalidArgument, i, err)
		}
		if _, ok := declared[gr.Key]; !ok {
			return nil, fmt.Errorf("%w: grants[%d].key: %q is not declared", ErrInvalidArgument, i, gr.Key)
		}
		grants = append(grants, gr)
	}
	if _, err := policy.New(policy.Spec{Identities: g.o.Identities, Grants: grants}); err != nil {
		return nil, fmt.Errorf("%w: grants: %v", ErrInvalidArgument, err)
	}
	lim, err := policy.NewLimiter(g.o.Freeze)
	if err != nil {
		return nil, err
	}
	var budgets []budgetEntry
	for i, pb := range req.GetBudgets() {
		b := budgetFromProto(pb)
		if _, ok := declared[b.Key]; !ok {
			return nil, fmt.Errorf("%w: budgets[%d].key: %q is not declared", ErrInvalidArgument, i, b.Key)
		}
		for _, o := range budgets {
			if o.Identity == b.Identity && o.Key == b.Key {
				return nil, fmt.Errorf("%w: budgets[%d]: second budget for one identity and key", ErrInvalidArgument, i)
			}
		}
		if err := setBudget(lim, b, now); err != nil {
			return nil, fmt.Errorf("%w: budgets[%d]: %v", ErrInvalidArgument, i, err)
		}
		budgets = append(budgets, b)
	}
	ledger, err := quorum.NewLedger(set, quorum.LedgerOptions{TimeLock: g.o.TimeLock, AllowDev: req.GetAllowDev()})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	// Sealed start: the installer's PIN is replaced now by a random one split
	// among the officers, and restored unless the ceremony's write succeeds.
	rot, err := g.sealCeremony(ctx, set, req)
	if err != nil {
		return nil, err
	}
	defer rot.Abort(ctx)

	t := &quorum.Transcript{Format: quorum.TranscriptFormat, Instance: g.o.Instance, Created: now, Dev: req.GetAllowDev(), Threshold: set.Threshold,
		Keys: []quorum.TranscriptKey{}, Grants: grants, Budgets: []quorum.TranscriptBudget{}}
	if t.Grants == nil {
		t.Grants = []policy.Grant{}
	}
	step := func(action, detail string) {
		t.Steps = append(t.Steps, quorum.TranscriptStep{N: len(t.Steps) + 1, Time: g.s.now().UTC(), Action: action, Detail: detail})
	}
	for _, o := range set.Officers {
		t.Officers = append(t.Officers, quorum.TranscriptOfficer{Name: o.Name, Fingerprint: o.Fingerprint(), PublicKey: o.PublicKey})
		step("declare-officer", fmt.Sprintf("%s %s", o.Name, o.Fingerprint()))
	}
	step("set-threshold", fmt.Sprintf("%d of %d (dev %t)", set.Threshold, len(set.Officers), req.GetAllowDev()))
	if t.Seal = rot.Transcript(); t.Seal != nil {
		step("seal-pin", rot.Step())
	}
	for _, k := range req.GetKeys() {
		tk, err := g.ceremonyKey(ctx, k.GetName(), declared[k.GetName()], k.GetDescription())
		if err != nil {
			return nil, fmt.Errorf("create key %q: %w", k.GetName(), err)
		}
		t.Keys = append(t.Keys, tk)
		step("create-key", fmt.Sprintf("%s %s v%d hsm_id %s in custody %t", tk.Name, tk.Purpose, tk.Version, tk.HSMID, tk.Attributes.Safe()))
	}
	for _, gr := range grants {
		step("install-grant", fmt.Sprintf("%s: %s on %s", gr.ID, gr.Identity, gr.Key))
	}
	for _, b := range budgets {
		t.Budgets = append(t.Budgets, quorum.TranscriptBudget{Identity: b.Identity, Key: b.Key, Rate: b.Budget.Rate,
			Burst: b.Budget.Burst, Volume: b.Budget.Volume, Window: b.Budget.Window.String()})
		step("install-budget", fmt.Sprintf("%q on %s: %d per %s", b.Identity, b.Key, b.Budget.Volume, b.Budget.Window))
	}
	doc, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(doc)
	sig, err := g.o.Signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign transcript: %w", err)
	}
	auditDER, err := x509.MarshalPKIXPublicKey(g.o.Signer.Public())
	if err != nil {
		return nil, err
	}
	tr := &storedTranscript{JSON: doc, Text: t.Text(), Signature: sig, AuditDER: auditDER}
	trb, err := json.Marshal(tr)
	if err != nil {
		return nil, err
	}

	ls := ledger.Snapshot()
	next := govState{Ceremony: true, Ledger: &ls, Grants: grants, Budgets: budgets, Orders: []policy.Order{}, Results: map[string]execResult{}}
	prevLim := g.s.limiter.Load()
	g.s.limiter.Store(lim)
	if err := g.persist(ctx, next, append([]store.Op{store.PutOp(govTranscriptKey, trb)}, rot.Ops()...)...); err != nil {
		g.s.limiter.Store(prevLim)
		return nil, err
	}
	rot.Commit()
	g.st, g.ledger, g.transcript = next, ledger, tr
	if err := g.install(lim); err != nil {
		return nil, err
	}
	if err := g.markCeremony(ctx); err != nil {
		return nil, err
	}
	callFrom(ctx).detail = fmt.Sprintf("ceremony: %d of %d officers, %d keys, %d grants, %d budgets",
		set.Threshold, len(set.Officers), len(t.Keys), len(grants), len(budgets))
	return transcriptProto(tr), nil
}

func ceremonyOfficers(req *custodyv1.InitCeremonyRequest, allowDev bool) (quorum.OfficerSet, error) {
	if req.GetAllowDev() && !allowDev {
		return quorum.OfficerSet{}, fmt.Errorf("%w: allow_dev: this custodyd is not a development instance", ErrInvalidArgument)
	}
	set := quorum.OfficerSet{Threshold: int(req.GetThreshold())}
	for i, o := range req.GetOfficers() {
		off := quorum.Officer{Name: o.GetName(), PublicKey: o.GetPublicKeyDer()}
		if err := off.Validate(); err != nil {
			return set, fmt.Errorf("%w: officers[%d]: %v", ErrInvalidArgument, i, err)
		}
		if fp := o.GetFingerprint(); fp != "" && fp != off.Fingerprint() {
			return set, fmt.Errorf("%w: officers[%d].fingerprint: does not match the public key", ErrInvalidArgument, i)
		}
		set.Officers = append(set.Officers, off)
	}
	if err := set.Validate(req.GetAllowDev()); err != nil {
		return set, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return set, nil
}

// ceremonyKey creates a key and reads its attributes back from the HSM.
func (g *Governance) ceremonyKey(ctx context.Context, name string, p keys.Purpose, desc string) (quorum.TranscriptKey, error) {
	k, err := g.s.keys.Create(ctx, name, p, desc)
	if err != nil {
		return quorum.TranscriptKey{}, err
	}
	e, err := g.s.keys.Get(name)
	if err != nil {
		return quorum.TranscriptKey{}, err
	}
	hk, err := e.HSMKey(k.Primary)
	if err != nil {
		return quorum.TranscriptKey{}, err
	}
	a, err := g.s.hsm.Attributes(ctx, hk)
	if err != nil {
		return quorum.TranscriptKey{}, err
	}
	v, _ := k.Version(k.Primary)
	return quorum.TranscriptKey{Name: name, Purpose: p.String(), Version: int(k.Primary), HSMID: hex.EncodeToString(v.HSMID),
		Attributes: quorum.TranscriptAttr{Token: a.Token, Private: a.Private, Sensitive: a.Sensitive, AlwaysSensitive: a.AlwaysSensitive,
			Extractable: a.Extractable, NeverExtractable: a.NeverExtractable, Local: a.Local, Modifiable: a.Modifiable}}, nil
}

func transcriptProto(tr *storedTranscript) *custodyv1.CeremonyTranscript {
	return &custodyv1.CeremonyTranscript{Json: tr.JSON, Text: tr.Text, Signature: tr.Signature, AuditPublicKeyDer: tr.AuditDER}
}

// GetCeremonyTranscript implements GovernanceService.
func (g *Governance) GetCeremonyTranscript(ctx context.Context, _ *custodyv1.GetCeremonyTranscriptRequest) (*custodyv1.CeremonyTranscript, error) {
	if err := g.s.authorizeAdmin(ctx, policy.OpGovernanceRead); err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.transcript == nil {
		return nil, fmt.Errorf("%w: no ceremony transcript (the ceremony has not run)", ErrGovNotFound)
	}
	return transcriptProto(g.transcript), nil
}

func grantFromProto(p *custodyv1.Grant) policy.Grant {
	g := policy.Grant{ID: p.GetId(), Identity: p.GetIdentity(), Key: p.GetKey(), ContextMatch: p.GetContextMatch(),
		RecipientKeys: p.GetRecipientKeySha256(), AllowPlaintext: p.GetAllowPlaintext()}
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
		RecipientKeySha256: g.RecipientKeys, AllowPlaintext: g.AllowPlaintext}
	for _, op := range g.Operations {
		out.Operations = append(out.Operations, string(op))
	}
	return out
}

func budgetFromProto(p *custodyv1.Budget) budgetEntry {
	return budgetEntry{Identity: p.GetIdentity(), Key: p.GetKey(), Budget: policy.Budget{
		Rate: p.GetRate(), Burst: int(p.GetBurst()), Volume: p.GetVolume(), Window: p.GetWindow().AsDuration()}}
}

// requireLedger returns the ledger or ErrNoCeremony. Called with g.mu held.
func (g *Governance) requireLedger() (*quorum.Ledger, error) {
	if g.ledger == nil {
		return nil, ErrNoCeremony
	}
	return g.ledger, nil
}

// record finds a proposal's ledger record. Called with g.mu held.
func (g *Governance) record(id string) (quorum.Record, bool) {
	for _, r := range g.ledger.Snapshot().Records {
		if r.Proposal.ID == id {
			return r, true
		}
	}
	return quorum.Record{}, false
}

func summary(p quorum.Proposal) string {
	b, err := json.Marshal(p.Payload)
	if err != nil {
		return string(p.Kind)
	}
	return fmt.Sprintf("%s %s", p.Kind, b)
}

// CeremonyMarkerLabel labels a token object that exists once a key ceremony
// has completed. The store's records are MAC'd but a deleted record leaves
// no trace in the store itself; the marker on the token does, so deleting
// gov/state cannot reopen the ceremony.
const CeremonyMarkerLabel = "custody:ceremony:v1"

func (g *Governance) ceremonyMarked(ctx context.Context) bool {
	_, err := g.s.hsm.FindByLabel(ctx, hsm.KindHMACSHA256, CeremonyMarkerLabel)
	return err == nil
}

// markCeremony creates the ceremony marker unless it exists.
func (g *Governance) markCeremony(ctx context.Context) error {
	if g.ceremonyMarked(ctx) {
		return nil
	}
	_, _, err := g.s.hsm.CreateKey(ctx, hsm.KindHMACSHA256, CeremonyMarkerLabel)
	if err != nil && !errors.Is(err, hsm.ErrExists) {
		return fmt.Errorf("ceremony marker: %w", err)
	}
	return nil
}
