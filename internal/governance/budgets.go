package governance

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/store"
	"github.com/custodyhq/custody/internal/strictjson"
)

// BudgetError is a refused budget spend: the reason (a policy sentinel) and
// when a retry could first fit (0 when retrying will not help).
type BudgetError struct {
	Err        error
	RetryAfter time.Duration
}

func (e *BudgetError) Error() string { return fmt.Sprintf("budget: %v", e.Err) }
func (e *BudgetError) Unwrap() error { return e.Err }

// budgetLedger makes budget spend durable before it is answered.
//
// The authoritative spend of each budget (identity×key, and a key's shared
// budget) is a record under gov/budget/ in the store. A request does not
// write the store: it is served from a reservation, a slice of units that
// was taken from the budget and written to the store before any of it was
// used. A crash loses what was reserved and not yet used (the budget is
// under-served, never over-served), so N crashes give no more than one
// budget. A reservation belongs to one volume window: units left when the
// window ends are dropped, since the new window must not see them. Unused
// units are given back at a clean shutdown.
//
// Slices are small for small budgets (a budget of 10 is reserved one unit
// at a time: exact) and grow with the rate, so the store sees far fewer
// writes than requests under load.
type budgetLedger struct {
	st  store.Store
	lim *policy.Limiter
	now func() time.Time
	log *slog.Logger

	mu    sync.Mutex // serialises reservations and their store writes
	res   map[policy.Subject]*reservation
	dirty map[policy.Subject]bool // refusal history not yet flushed
}

type reservation struct {
	units  int
	window time.Time
}

// budgetRecord is the stored spend of one budget.
type budgetRecord struct {
	Subject *policy.SubjectState `json:"subject,omitempty"`
	Shared  *policy.KeyState     `json:"shared,omitempty"`
}

func subjectPath(s policy.Subject) string {
	sum := sha256.Sum256([]byte(s.Identity))
	return budgetPrefix + s.Key + "/" + hex.EncodeToString(sum[:])
}

// sharedPath sorts apart from subjects: hex digests never contain '~'.
func sharedPath(key string) string { return budgetPrefix + key + "/~shared" }

// openBudgets loads every budget's stored spend.
func openBudgets(ctx context.Context, st store.Store, rule policy.FreezeRule, now func() time.Time, log *slog.Logger) (*budgetLedger, error) {
	lim, err := policy.NewLimiter(rule)
	if err != nil {
		return nil, err
	}
	b := &budgetLedger{st: st, lim: lim, now: now, log: log, res: map[policy.Subject]*reservation{}, dirty: map[policy.Subject]bool{}}
	kvs, err := st.List(ctx, budgetPrefix, "", 0)
	if err != nil {
		return nil, fmt.Errorf("budget state: %w", err)
	}
	if len(kvs) == 0 {
		return b, b.importLegacy(ctx)
	}
	for _, kv := range kvs {
		var rec budgetRecord
		if err := strictjson.Unmarshal(kv.Value, &rec); err != nil {
			return nil, fmt.Errorf("%w: budget state %s: %v", store.ErrCorrupt, kv.Key, err)
		}
		if err := b.restore(kv.Key, rec); err != nil {
			return nil, fmt.Errorf("%w: budget state %s: %v", store.ErrCorrupt, kv.Key, err)
		}
	}
	return b, nil
}

func (b *budgetLedger) restore(path string, rec budgetRecord) error {
	switch {
	case rec.Subject != nil && rec.Shared == nil:
		if subjectPath(rec.Subject.Subject) != path {
			return errors.New("record is stored under another budget's name")
		}
		return b.lim.PutSubjectState(*rec.Subject)
	case rec.Shared != nil && rec.Subject == nil:
		if sharedPath(rec.Shared.Key) != path {
			return errors.New("record is stored under another budget's name")
		}
		return b.lim.PutKeyState(*rec.Shared)
	}
	return errors.New("a record holds exactly one budget")
}

// importLegacy moves a round-one gov/limiter record to per-budget records.
func (b *budgetLedger) importLegacy(ctx context.Context) error {
	kv, err := b.st.Get(ctx, legacyLimiterKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("budget state: %w", err)
	}
	var ls policy.LimiterState
	if err := strictjson.Unmarshal(kv.Value, &ls); err != nil {
		return fmt.Errorf("%w: budget state: %v", store.ErrCorrupt, err)
	}
	ops := []store.Op{store.DeleteOp(legacyLimiterKey)}
	for _, ss := range ls.Subjects {
		if err := b.lim.PutSubjectState(ss); err != nil {
			return fmt.Errorf("%w: budget state: %v", store.ErrCorrupt, err)
		}
		ops = append(ops, b.subjectOps(ss.Subject)...)
	}
	for _, ks := range ls.Keys {
		if err := b.lim.PutKeyState(ks); err != nil {
			return fmt.Errorf("%w: budget state: %v", store.ErrCorrupt, err)
		}
	}
	for i := 0; i < len(ops); i += store.MaxTxnOps {
		if err := b.st.Txn(ctx, nil, ops[i:min(i+store.MaxTxnOps, len(ops))]); err != nil {
			return fmt.Errorf("budget state: %w", err)
		}
	}
	return nil
}

// apply installs budget specs, keeping what has been spent. A budget not
// listed is forgotten: its stored spend may remain, but allows nothing.
func (b *budgetLedger) apply(specs []BudgetEntry, now time.Time) error {
	keep := make([]policy.Subject, 0, len(specs))
	for _, e := range specs {
		if err := setBudget(b.lim, e, now); err != nil {
			return fmt.Errorf("budget %q on %q: %w", e.Identity, e.Key, err)
		}
		keep = append(keep, policy.Subject{Identity: e.Identity, Key: e.Key})
	}
	b.lim.Retain(keep)
	return nil
}

func setBudget(l *policy.Limiter, b BudgetEntry, now time.Time) error {
	if b.Identity == "" {
		return l.SetKeyBudget(b.Key, b.Budget, now)
	}
	return l.SetBudget(b.Identity, b.Key, b.Budget, now)
}

// subjectOps are the store writes of one identity×key's spend (and its
// key's shared budget, if any).
func (b *budgetLedger) subjectOps(s policy.Subject) []store.Op {
	ss, ks, ok := b.lim.SubjectState(s.Identity, s.Key)
	if !ok {
		return nil
	}
	var ops []store.Op
	if v, err := json.Marshal(budgetRecord{Subject: &ss}); err == nil {
		ops = append(ops, store.PutOp(subjectPath(s), v))
	}
	if ks != nil {
		if v, err := json.Marshal(budgetRecord{Shared: ks}); err == nil {
			ops = append(ops, store.PutOp(sharedPath(s.Key), v))
		}
	}
	return ops
}

// dedupe keeps the last write of each store key: a key's shared budget
// rides along with each of its identities' records, and a transaction may
// write a key once.
func dedupe(ops []store.Op) []store.Op {
	last := map[string]int{}
	for i, op := range ops {
		last[op.Key] = i
	}
	out := ops[:0:0]
	for i, op := range ops {
		if last[op.Key] == i {
			out = append(out, op)
		}
	}
	return out
}

// sharedOps is the store write of a key's shared budget alone.
func (b *budgetLedger) sharedOps(key string) []store.Op {
	st := b.lim.Snapshot()
	for _, ks := range st.Keys {
		if ks.Key == key {
			if v, err := json.Marshal(budgetRecord{Shared: &ks}); err == nil {
				return []store.Op{store.PutOp(sharedPath(key), v)}
			}
		}
	}
	return nil
}

// persist writes s's spend durably. Called with b.mu held.
func (b *budgetLedger) persist(s policy.Subject) error {
	ops := b.subjectOps(s)
	if len(ops) == 0 {
		return nil
	}
	if err := b.st.Txn(context.Background(), nil, ops); err != nil {
		return fmt.Errorf("%w: persist budget spend: %w", ErrUnavailable, err)
	}
	delete(b.dirty, s)
	return nil
}

// sliceSize is how many units one reservation takes: about a quarter of a
// second at the budget's rate, at most a quarter of its burst and a
// sixteenth of its volume, at least one.
func sliceSize(bu policy.Budget) int {
	n := min(math.Ceil(bu.Rate/4), float64(bu.Burst)/4, float64(bu.Volume)/16)
	return max(1, int(n))
}

// take spends n units of identity's budget on key.
func (b *budgetLedger) take(identity, key string, n int) error {
	if n < 1 {
		return &BudgetError{Err: fmt.Errorf("%w: got %d", policy.ErrInvalidCount, n)}
	}
	s := policy.Subject{Identity: identity, Key: key}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	window := b.lim.WindowStart(identity, key, now)
	r := b.res[s]
	if r != nil && !r.window.Equal(window) {
		// Units reserved in an earlier window are not carried over.
		delete(b.res, s)
		r = nil
	}
	if r != nil && r.units >= n && !b.lim.Frozen(identity, key) {
		r.units -= n
		return nil
	}
	held := 0
	if r != nil {
		held = r.units
	}
	need := n - held
	if avail := b.lim.Available(identity, key, now); avail >= int64(need) {
		k := need
		if ss, _, ok := b.lim.SubjectState(identity, key); ok {
			k = max(need, min(sliceSize(ss.Bucket.Budget), int(avail)))
		}
		if ok, retry, reason := b.lim.Take(identity, key, k, now); !ok {
			return &BudgetError{Err: reason, RetryAfter: retry}
		}
		if err := b.persist(s); err != nil {
			b.lim.Refund(identity, key, k, window, now)
			return err
		}
		b.res[s] = &reservation{units: held + k - n, window: window}
		return nil
	}
	wasFrozen := b.lim.Frozen(identity, key)
	ok, retry, reason := b.lim.Take(identity, key, n, now)
	if ok {
		// Available said no but Take said yes (it cannot, but do not lose
		// durability if it did).
		if err := b.persist(s); err != nil {
			b.lim.Refund(identity, key, n, window, now)
			return err
		}
		return nil
	}
	if errors.Is(reason, policy.ErrFrozen) && !wasFrozen {
		// A freeze is durable before the refusal that reports it.
		delete(b.res, s)
		if err := b.persist(s); err != nil {
			return err
		}
	} else if !wasFrozen {
		b.dirty[s] = true
	}
	return &BudgetError{Err: reason, RetryAfter: retry}
}

// dropReservation forgets s's unused units without returning them (after a
// freeze, an unfreeze or a budget change: what is left must be re-reserved
// under the budget in force). Called with b.mu held.
func (b *budgetLedger) dropReservation(s policy.Subject) { delete(b.res, s) }

// flush persists refusal histories changed since the last flush.
func (b *budgetLedger) flush(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for s := range b.dirty {
		if err := b.persist(s); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// close gives back unused reservations and flushes.
func (b *budgetLedger) close(ctx context.Context) error {
	b.mu.Lock()
	now := b.now()
	var errs []error
	for s, r := range b.res {
		if r.units > 0 {
			b.lim.Refund(s.Identity, s.Key, r.units, r.window, now)
			if err := b.persist(s); err != nil {
				errs = append(errs, err)
			}
		}
		delete(b.res, s)
	}
	b.mu.Unlock()
	return errors.Join(append(errs, b.flush(ctx))...)
}

// frozen reports whether identity is frozen on key.
func (b *budgetLedger) frozen(identity, key string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lim.Frozen(identity, key)
}

// frozenCount is how many identity×key pairs are frozen.
func (b *budgetLedger) frozenCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.lim.FrozenSubjects())
}

// usage reports a budget's spend for listings, without spending or
// refilling anything. Units reserved but not yet used count as used.
func (b *budgetLedger) usage(identity, key string) (policy.Usage, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lim.Usage(identity, key, b.now())
}

// isBudgetPath reports whether a store key is a budget record.
func isBudgetPath(k string) bool { return strings.HasPrefix(k, budgetPrefix) }
