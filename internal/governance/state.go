package governance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
	"github.com/custodyhq/custody/internal/strictjson"
)

// Store keys of the governance state. Every value is authenticated by the
// store's HSM sealer, so an edit made outside custodyd stops it at start.
const (
	// govPrefix holds everything below.
	govPrefix     = "gov/"
	stateKey      = "gov/state"
	transcriptKey = "gov/transcript"
	planKey       = "gov/ceremony-plan"
	// budgetPrefix holds one record per budget's spend (budgets.go).
	budgetPrefix = "gov/budget/"
	// legacyLimiterKey is where round-one vaults kept all budget spend.
	legacyLimiterKey = "gov/limiter"
)

// BudgetEntry is one budget installed by the ceremony or a proposal:
// identity's budget on key, or the key's shared budget when Identity is "".
type BudgetEntry struct {
	Identity string        `json:"identity,omitempty"`
	Key      string        `json:"key"`
	Budget   policy.Budget `json:"budget"`
}

// ExecResult is the outcome of executing a proposal.
type ExecResult struct {
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// State is everything governance persists under gov/state. It is a value:
// changes are made on a clone and persisted before they replace it.
type State struct {
	Ceremony bool                  `json:"ceremony"`
	Ledger   *quorum.LedgerState   `json:"ledger,omitempty"`
	Grants   []policy.Grant        `json:"grants"`
	Budgets  []BudgetEntry         `json:"budgets"`
	Orders   []policy.Order        `json:"orders"`
	Results  map[string]ExecResult `json:"results"`
	// Trust is what the ceremony fixed (client CAs, roles, governance
	// parameters, production), as set-trust proposals changed it since;
	// nil before the ceremony (and for a ceremony that predates it, until
	// the first start adopts the configuration's).
	Trust *quorum.CeremonyTrust `json:"trust,omitempty"`
}

func newState() State {
	return State{Grants: []policy.Grant{}, Budgets: []BudgetEntry{}, Orders: []policy.Order{}, Results: map[string]ExecResult{}}
}

// clone deep-copies st through its JSON form, the form it is stored in.
func (st State) clone() State {
	b, err := json.Marshal(st)
	if err != nil {
		panic("governance: state does not encode: " + err.Error())
	}
	out := newState()
	if err := json.Unmarshal(b, &out); err != nil {
		panic("governance: state does not decode: " + err.Error())
	}
	if out.Results == nil {
		out.Results = map[string]ExecResult{}
	}
	return out
}

// loadState reads gov/state and the revision it was written at (0 when
// there is none).
func loadState(ctx context.Context, st store.Store) (State, int64, error) {
	kv, err := st.Get(ctx, stateKey)
	if errors.Is(err, store.ErrNotFound) {
		return newState(), 0, nil
	}
	if err != nil {
		return State{}, 0, fmt.Errorf("governance state: %w", err)
	}
	out, err := decodeState(kv.Value)
	if err != nil {
		return State{}, 0, err
	}
	return out, kv.Revision, nil
}

func decodeState(b []byte) (State, error) {
	out := newState()
	if err := strictjson.Unmarshal(b, &out); err != nil {
		return State{}, fmt.Errorf("%w: governance state: %v", store.ErrCorrupt, err)
	}
	if out.Results == nil {
		out.Results = map[string]ExecResult{}
	}
	return out, nil
}

// StoredTranscript is gov/transcript: the signed ceremony transcript.
type StoredTranscript struct {
	JSON      []byte `json:"json"`
	Text      string `json:"text"`
	Signature []byte `json:"signature"`
	AuditDER  []byte `json:"audit_der"`
}

func loadTranscript(ctx context.Context, st store.Store) (*StoredTranscript, error) {
	kv, err := st.Get(ctx, transcriptKey)
	if err != nil {
		return nil, fmt.Errorf("ceremony transcript: %w", err)
	}
	var tr StoredTranscript
	if err := strictjson.Unmarshal(kv.Value, &tr); err != nil {
		return nil, fmt.Errorf("%w: ceremony transcript: %v", store.ErrCorrupt, err)
	}
	return &tr, nil
}

// stateOp is the store write of st with the ledger as it is now.
func (g *Governance) stateOp(st *State) (store.Op, error) {
	if g.ledger != nil {
		ls := g.ledger.Snapshot()
		st.Ledger = &ls
	}
	b, err := json.Marshal(st)
	if err != nil {
		return store.Op{}, err
	}
	return store.PutOp(stateKey, b), nil
}

// commit persists next (with the ledger as it is now) and extra ops in one
// transaction, then makes next the state in force and publishes its
// Snapshot. On failure the ledger is restored to before and nothing is in
// force that was not before. Called with g.mu held.
func (g *Governance) commit(ctx context.Context, before quorum.LedgerState, next State, extra ...store.Op) error {
	return g.commitIf(ctx, before, next, nil, extra)
}

// commitIf is commit with more conditions. The write is a compare-and-swap
// on gov/state: it applies only if no other replica wrote the state since
// this process read it; otherwise it fails with errStale and changes
// nothing (the caller reads the store again: refresh). It goes through
// g.via: the store, or the leadership of the replica running scheduled
// work.
func (g *Governance) commitIf(ctx context.Context, before quorum.LedgerState, next State, conds []store.Cond, extra []store.Op) error {
	op, err := g.stateOp(&next)
	var rev int64
	if err == nil {
		conds = append([]store.Cond{store.RevisionIs(stateKey, g.stRev)}, conds...)
		rev, err = store.TxnRev(context.WithoutCancel(ctx), g.via, conds, append([]store.Op{op}, extra...))
	}
	if err != nil {
		if g.ledger != nil {
			if l, rerr := quorum.RestoreLedger(before); rerr == nil {
				g.ledger = l
			}
		}
		if errors.Is(err, store.ErrConflict) {
			return errStale
		}
		return fmt.Errorf("%w: persist governance state: %w", ErrUnavailable, err)
	}
	g.st, g.stRev = next, rev
	return g.publish(next)
}

// ledgerState is the ledger's state, or the zero value before the ceremony.
func (g *Governance) ledgerState() quorum.LedgerState {
	if g.ledger == nil {
		return quorum.LedgerState{}
	}
	return g.ledger.Snapshot()
}
