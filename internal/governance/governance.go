package governance

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
)

// Keys is the key registry as governance uses it: the ceremony and key
// proposals create and change keys through it. *keys.Registry implements it.
type Keys interface {
	Get(name string) (*keys.Entry, error)
	Create(ctx context.Context, name string, p keys.Purpose, description string) (*keys.Key, error)
	Rotate(ctx context.Context, name string) (*keys.Key, error)
	Enable(ctx context.Context, name string, n uint32) (*keys.Key, error)
	Disable(ctx context.Context, name string, n uint32) (*keys.Key, error)
	ScheduleDestroy(ctx context.Context, name string, n uint32, wait time.Duration) (*keys.Key, error)
	// Discard deletes, at once, a key that an unfinished ceremony created
	// and that was never in use (a ceremony that is replaced rolls back).
	Discard(ctx context.Context, name string) error
}

// Token is the HSM as governance uses it: the ceremony marker, a token
// object that exists once a ceremony has completed, so that deleting the
// store's governance state cannot reopen the ceremony.
type Token interface {
	// CeremonyMarked reports whether the marker exists. It returns false
	// only when the token definitely holds no marker; an HSM error or more
	// than one marker object is an error.
	CeremonyMarked(ctx context.Context) (bool, error)
	// MarkCeremony creates the marker (it is harmless if it exists).
	MarkCeremony(ctx context.Context) error
	// KeyAttributes reads the custody attributes of a key version back
	// from the token, for the ceremony transcript.
	KeyAttributes(ctx context.Context, e *keys.Entry, version uint32) (quorum.TranscriptAttr, error)
}

// Seal is the vault's sealed start (internal/sealsvc, through the daemon):
// the key ceremony replaces the installer's HSM PIN with a random one split
// among the officers, and a rekey-seal proposal makes a new PIN and shares.
type Seal interface {
	// Ceremony replaces the PIN now (the token already has the new one);
	// the rotation is undone by Abort unless Commit follows the ceremony's
	// durable write, which carries Ops.
	Ceremony(ctx context.Context, threshold int, officers []SealOfficer) (PINRotation, error)
	// StartRekey makes a new PIN and shares for the current officers; the
	// old PIN is retired only once every new holder has confirmed.
	StartRekey(ctx context.Context, proposalID string, officers quorum.OfficerSet, pl quorum.RekeySeal) error
}

// SealOfficer is an officer as the sealed start needs them: the signing key
// and the separate share key their share of the PIN is encrypted to.
type SealOfficer struct {
	Name       string
	SigningKey []byte // PKIX DER
	ShareKey   []byte // PKIX DER, P-256
}

// PINRotation is a ceremony's PIN replacement in progress.
type PINRotation interface {
	Transcript() *quorum.TranscriptSeal
	Step() string
	Ops() []store.Op
	Commit()
	Abort(ctx context.Context)
}

// Actor is who asks for a governance action: an authenticated identity and
// the role it acts in ("custodyd" with no role for scheduled work).
type Actor struct {
	Identity string
	Role     policy.Role
}

// System is the actor of scheduled work (time-locks that mature).
var System = Actor{Identity: "custodyd"}

// Outcome of an Event.
type Outcome int

// Event outcomes.
const (
	// Intent: about to change state; the change is made only if this
	// record is durable.
	Intent Outcome = iota
	// Done: a change that was not requested over the API (a time-lock that
	// matured) has been made or has failed (Err).
	Done
)

// Event is one governance record for the audit log.
type Event struct {
	Actor   Actor
	Action  string // "propose", "approve", "veto", "execute", "ceremony", ...
	Key     string // the key concerned, if any
	Detail  string // what exactly: proposal id, kind, summary
	Outcome Outcome
	Err     error // for Done: nil when the change was made
}

// Recorder writes governance's records durably (the audit log).
type Recorder interface {
	Record(ctx context.Context, ev Event) error
}

// Options wire a Governance.
type Options struct {
	// Store is the authenticated store; governance owns the "gov/" prefix.
	Store store.Store
	// Keys is the key registry.
	Keys Keys
	// Token holds the ceremony marker.
	Token Token
	// Signer is the HSM audit key: it signs the ceremony transcript.
	Signer crypto.Signer
	// Recorder receives the records made before every change.
	Recorder Recorder
	// Identities and their roles, from configuration. Grants apply only to
	// identities configured as relays. After the ceremony the roles the
	// ceremony fixed are in force, and these must agree with them.
	Identities []policy.Identity
	// ClientCAs are the SHA-256 fingerprints (lower-case hex) of the client
	// CA certificates the configuration trusts; the ceremony fixes them.
	ClientCAs []string
	// Production marks a production vault; a ceremony records it, and a
	// development configuration is refused on its token afterwards.
	Production bool
	// DevGrants and DevBudgets apply while the vault is not governed (a dev
	// vault before its ceremony); they are ignored afterwards.
	DevGrants  []policy.Grant
	DevBudgets []BudgetEntry
	// TimeLock for widening proposals; ProposalTTL bounds a proposal's life.
	TimeLock, ProposalTTL time.Duration
	// Freeze is the sustained-breach rule of budgets.
	Freeze policy.FreezeRule
	// QuorumRequired governs the vault even before the ceremony.
	QuorumRequired bool
	// AllowDev permits a ceremony with M = 1 (dev instances only).
	AllowDev bool
	// Instance names this custodyd in the transcript.
	Instance string
	// DestroyWait is the waiting period of a destroy-key proposal.
	DestroyWait time.Duration
	// Check, if set, refuses grants that could never be used (called where
	// grants are made: the ceremony and add-grant proposals).
	Check  func(policy.Grant) error
	Now    func() time.Time
	Logger *slog.Logger

	// Seal, if set, is the vault's sealed start.
	Seal Seal

	// faultAfterKey, in tests, fails the ceremony after its i-th key.
	faultAfterKey func(i int) error
}

// Committer commits a store transaction: the store itself, or the
// store.Leadership of the replica that runs scheduled work (fenced). It
// must implement store.RevTxner, as every Store and Leadership of package
// store does.
type Committer interface {
	Txn(ctx context.Context, conds []store.Cond, ops []store.Op) error
}

func (o *Options) setDefaults() {
	if o.TimeLock <= 0 {
		o.TimeLock = quorum.DefaultTimeLock
	}
	if o.ProposalTTL <= o.TimeLock {
		o.ProposalTTL = o.TimeLock + 30*24*time.Hour
	}
	if o.Freeze == (policy.FreezeRule{}) {
		o.Freeze = policy.DefaultFreezeRule
	}
	if o.DestroyWait <= 0 {
		o.DestroyWait = 7 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Governance is the vault's governance state and the only writer of it.
// It is safe for concurrent use.
type Governance struct {
	o Options

	mu         sync.Mutex // serialises changes; guards st, stRev, via, ledger, transcript
	st         State
	stRev      int64          // store revision gov/state was read or written at (0: none)
	via        Committer      // what commits go through (see ExecuteReadyVia)
	ledger     *quorum.Ledger // nil before the ceremony
	transcript *StoredTranscript
	budgets    *budgetLedger
	snap       atomic.Pointer[Snapshot]
	vault      string // quorum.VaultOf the audit key; "" without a signer
}

// Open loads the governance state from the store (refusing one that fails
// authentication or that the token says was rolled back) and builds the
// first Snapshot.
func Open(ctx context.Context, o Options) (*Governance, error) {
	o.setDefaults()
	if o.Store == nil || o.Keys == nil || o.Token == nil || o.Recorder == nil {
		return nil, errors.New("governance: store, keys, token and recorder are required")
	}
	g := &Governance{o: o, st: newState(), via: o.Store}
	if o.Signer != nil {
		der, err := x509.MarshalPKIXPublicKey(o.Signer.Public())
		if err != nil {
			return nil, fmt.Errorf("governance: audit key: %w", err)
		}
		g.vault = quorum.VaultOf(der)
	}
	if err := g.load(ctx); err != nil {
		return nil, err
	}
	return g, nil
}

// VaultID names this vault in proposals (quorum.VaultOf its audit key).
func (g *Governance) VaultID() string { return g.vault }

func (g *Governance) load(ctx context.Context) error {
	st, rev, err := loadState(ctx, g.o.Store)
	if err != nil {
		return err
	}
	found := rev != 0
	g.stRev = rev
	marked, err := g.o.Token.CeremonyMarked(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMarker, err)
	}
	if (!found || !st.Ceremony) && marked {
		return ErrStateRolledBack
	}
	if found {
		g.st = st
	}
	if err := g.checkTrust(g.st); err != nil {
		return err
	}
	trust := g.trust(g.st)
	if g.st.Ceremony {
		if err := g.o.Token.MarkCeremony(ctx); err != nil {
			return fmt.Errorf("ceremony marker: %w", err)
		}
		if err := g.markProduction(ctx, g.st); err != nil {
			return err
		}
		if g.st.Ledger == nil {
			return fmt.Errorf("%w: governance state: ceremony recorded without a ledger", store.ErrCorrupt)
		}
		ls := *g.st.Ledger
		// The lock in force applies; RestoreLedger never shortens a pending one.
		ls.Options.TimeLock = trust.TimeLock
		if g.ledger, err = quorum.RestoreLedger(ls); err != nil {
			return fmt.Errorf("governance ledger: %w", err)
		}
		if g.transcript, err = loadTranscript(ctx, g.o.Store); err != nil {
			return err
		}
	}
	if g.budgets, err = openBudgets(ctx, g.o.Store, trust.Freeze, g.o.Now, g.o.Logger); err != nil {
		return err
	}
	if err := g.budgets.apply(g.budgetSpecs(g.st), g.o.Now()); err != nil {
		return err
	}
	if err := g.publish(g.st); err != nil {
		return err
	}
	return g.adoptTrust(ctx)
}

// governed reports whether direct changes are refused.
func (g *Governance) governed(st State) bool { return st.Ceremony || g.o.QuorumRequired }

// budgetSpecs are the budgets in force for st.
func (g *Governance) budgetSpecs(st State) []BudgetEntry {
	if !g.governed(st) {
		return g.o.DevBudgets
	}
	return st.Budgets
}

// publish builds the Snapshot of st and makes it the one in force. Called
// with g.mu held (or before serving).
func (g *Governance) publish(st State) error {
	snap, err := g.build(st)
	if err != nil {
		return err
	}
	g.snap.Store(snap)
	return nil
}

// build makes the Snapshot st implies. A grant whose identity is no longer
// a configured relay is left out: configuration can narrow access, never
// widen it.
func (g *Governance) build(st State) (*Snapshot, error) {
	identities := g.identities(st)
	relay := map[string]bool{}
	for _, id := range identities {
		if slices.Contains(id.Roles, policy.RoleRelay) {
			relay[id.ID] = true
		}
	}
	grants := st.Grants
	if !g.governed(st) {
		grants = g.o.DevGrants
	}
	spec := policy.Spec{Identities: identities}
	for _, gr := range grants {
		if relay[gr.Identity] {
			spec.Grants = append(spec.Grants, gr)
		} else {
			g.o.Logger.Warn("grant skipped: identity is not a configured relay", "grant", gr.ID)
		}
	}
	p, err := policy.New(spec)
	if err != nil {
		return nil, err
	}
	s := &Snapshot{
		governed: g.governed(st), ceremony: st.Ceremony, policy: p, roles: map[string]policy.Role{},
		budgets: slices.Clone(g.budgetSpecs(st)), orders: slices.Clone(st.Orders),
		// A governed vault refuses key use without a budget; a dev vault
		// without configured budgets enforces none.
		budgeted: g.governed(st) || len(g.o.DevBudgets) > 0,
	}
	for _, id := range identities {
		if len(id.Roles) > 0 {
			s.roles[id.ID] = id.Roles[0]
		}
	}
	if st.Ceremony && st.Trust != nil {
		// The client CAs the ceremony fixed: a certificate that chains only
		// to another CA is refused even if the CA file trusts it.
		s.clientCAs = map[string]bool{}
		for _, fp := range st.Trust.ClientCAs {
			s.clientCAs[fp] = true
		}
	}
	if g.ledger != nil {
		s.officers = g.ledger.Officers()
	}
	return s, nil
}

// Snapshot returns the access state in force. It is immutable: a change
// publishes a new one.
func (g *Governance) Snapshot() *Snapshot { return g.snap.Load() }

// record writes ev durably before a change; its failure is the caller's
// failure (ErrUnavailable), and nothing changes.
func (g *Governance) record(ctx context.Context, ev Event) error {
	if err := g.o.Recorder.Record(context.WithoutCancel(ctx), ev); err != nil {
		return fmt.Errorf("%w: audit record for %s: %w", ErrUnavailable, ev.Action, err)
	}
	return nil
}

// Spend takes n units of identity's budget on key, durably before it
// returns. Without budgets (a dev vault with none configured) nothing is
// spent. Refusals are *BudgetError.
func (g *Governance) Spend(identity, key string, n int) error {
	if !g.Snapshot().budgeted {
		return nil
	}
	return g.budgets.take(identity, key, n)
}

// FlushBudgets persists refusal histories changed since the last flush
// (spend and freezes are durable as they happen). The daemon calls it
// periodically and at shutdown.
func (g *Governance) FlushBudgets(ctx context.Context) error { return g.budgets.flush(ctx) }

// Close returns unused budget reservations and flushes budget state.
func (g *Governance) Close(ctx context.Context) error { return g.budgets.close(ctx) }

// Frozen reports whether identity is frozen on key.
func (g *Governance) Frozen(identity, key string) bool { return g.budgets.frozen(identity, key) }

// FrozenCount is how many identity×key budgets are frozen (a sustained
// breach) until an unfreeze proposal executes.
func (g *Governance) FrozenCount() int { return g.budgets.frozenCount() }

// BudgetUse is a budget in force with its spend now (units reserved for a
// relay but not yet used count as used).
type BudgetUse struct {
	BudgetEntry
	Usage policy.Usage
	Known bool // false when no spend is recorded yet
}

// BudgetUses returns the budgets in force with their spend.
func (g *Governance) BudgetUses() []BudgetUse {
	var out []BudgetUse
	for _, e := range g.Snapshot().Budgets() {
		u, ok := g.budgets.usage(e.Identity, e.Key)
		out = append(out, BudgetUse{BudgetEntry: e, Usage: u, Known: ok})
	}
	return out
}

// current is what Widening compares a proposal with. Called with g.mu held.
func (g *Governance) current() quorum.Current {
	budgets := slices.Clone(g.st.Budgets)
	trust := g.trust(g.st).Trust.Clone()
	return quorum.Current{
		Trust:     &trust,
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

// requireLedger returns the ledger or ErrNoCeremony. Called with g.mu held.
func (g *Governance) requireLedger() (*quorum.Ledger, error) {
	if g.ledger == nil {
		return nil, ErrNoCeremony
	}
	return g.ledger, nil
}

// isRelay reports whether identity is configured with the relay role.
func (g *Governance) isRelay(identity string) bool {
	return slices.ContainsFunc(g.identities(g.st), func(id policy.Identity) bool {
		return id.ID == identity && slices.Contains(id.Roles, policy.RoleRelay)
	})
}
