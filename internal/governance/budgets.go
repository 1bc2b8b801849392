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
	"slices"
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
//
// The budget is global when replicas share the store. Every write of a
// budget record is a compare-and-swap on the revision this process last
// saw of it; a replica that loses the race reads the record again and
// decides again. So the units reserved by all replicas together never
// exceed the budget: what can exceed it is what a replica serves from a
// slice it reserved before a change it has not seen yet (a freeze, a lower
// budget, an unfreeze is not affected): at most one slice per replica per
// identity×key, for as long as the change takes to reach the replica's
// watch. Each replica keeps its limiter in step with the records through
// the watch (observe). A refusal counts towards a freeze on the replica
// that refused it; refusals are merged into the record (flush), so
// refusals spread over replicas add up, and the freeze, once written, is
// seen by every replica.
type budgetLedger struct {
	st  store.Store
	lim *policy.Limiter
	now func() time.Time
	log *slog.Logger

	mu      sync.Mutex // serialises reservations and their store writes
	res     map[policy.Subject]*reservation
	dirty   map[policy.Subject]bool        // refusal history not yet flushed
	pending map[policy.Subject][]time.Time // refusals made here since this replica last wrote the record
	revs    map[string]int64               // store revision of each budget record as last seen
}

// casAttempts bounds how often a budget write is retried after losing the
// race for its record to another replica.
const casAttempts = 64

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
	b := &budgetLedger{st: st, lim: lim, now: now, log: log, res: map[policy.Subject]*reservation{}, dirty: map[policy.Subject]bool{},
		pending: map[policy.Subject][]time.Time{}, revs: map[string]int64{}}
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
		b.revs[kv.Key] = kv.Revision
	}
	return b, nil
}

// observe installs a budget record read from the store (another replica's
// write, delivered by the watch, or a re-read), unless this process has
// seen it already. Refusals made here and not yet written stay counted. A
// record of a budget not in force is ignored. Called with b.mu held.
func (b *budgetLedger) observeLocked(kv store.KV) error {
	if kv.Revision != 0 && kv.Revision <= b.revs[kv.Key] {
		return nil
	}
	var rec budgetRecord
	if err := strictjson.Unmarshal(kv.Value, &rec); err != nil {
		return fmt.Errorf("%w: budget state %s: %v", store.ErrCorrupt, kv.Key, err)
	}
	switch {
	case rec.Subject != nil && rec.Shared == nil:
		s := rec.Subject.Subject
		if subjectPath(s) != kv.Key {
			return fmt.Errorf("%w: budget state %s: record is stored under another budget's name", store.ErrCorrupt, kv.Key)
		}
		if _, ok := b.lim.Usage(s.Identity, s.Key, b.now()); !ok {
			break
		}
		ss := *rec.Subject
		ss.Refusals = mergeTimes(ss.Refusals, b.pending[s])
		if err := b.lim.PutSubjectState(ss); err != nil {
			return fmt.Errorf("%w: budget state %s: %v", store.ErrCorrupt, kv.Key, err)
		}
		if ss.Frozen {
			// A freeze is global: what this replica still holds of the
			// budget is not served.
			delete(b.res, s)
		}
	case rec.Shared != nil && rec.Subject == nil:
		if sharedPath(rec.Shared.Key) != kv.Key {
			return fmt.Errorf("%w: budget state %s: record is stored under another budget's name", store.ErrCorrupt, kv.Key)
		}
		if _, ok := b.lim.Usage("", rec.Shared.Key, b.now()); !ok {
			break
		}
		if err := b.lim.PutKeyState(*rec.Shared); err != nil {
			return fmt.Errorf("%w: budget state %s: %v", store.ErrCorrupt, kv.Key, err)
		}
	default:
		return fmt.Errorf("%w: budget state %s: a record holds exactly one budget", store.ErrCorrupt, kv.Key)
	}
	b.revs[kv.Key] = kv.Revision
	return nil
}

// observeDeleted forgets a deleted budget record's revision.
func (b *budgetLedger) observeDeleted(key string, rev int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rev > b.revs[key] {
		b.revs[key] = rev
	}
}

// observe is observeLocked for the watch.
func (b *budgetLedger) observe(kv store.KV) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.observeLocked(kv)
}

// rereadLocked reads budget records again (after losing a race for them).
// Called with b.mu held.
func (b *budgetLedger) rereadLocked(ctx context.Context, paths []string) error {
	for _, p := range paths {
		kv, err := b.st.Get(ctx, p)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("%w: read budget state: %w", ErrUnavailable, err)
		}
		if err := b.observeLocked(kv); err != nil {
			return err
		}
	}
	return nil
}

// rereadAll reads every budget record again.
func (b *budgetLedger) rereadAll(ctx context.Context) error {
	kvs, err := b.st.List(ctx, budgetPrefix, "", 0)
	if err != nil {
		return fmt.Errorf("%w: read budget state: %w", ErrUnavailable, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, kv := range kvs {
		if err := b.observeLocked(kv); err != nil {
			return err
		}
	}
	return nil
}

// mergeTimes is the union of two sorted refusal histories, sorted.
func mergeTimes(a, c []time.Time) []time.Time {
	if len(c) == 0 {
		return a
	}
	out := append(slices.Clone(a), c...)
	slices.SortFunc(out, func(x, y time.Time) int { return x.Compare(y) })
	return slices.CompactFunc(out, func(x, y time.Time) bool { return x.Equal(y) })
}

// conds are the compare-and-swap conditions of writing ops: each record
// is still at the revision this process last saw (0: absent).
func (b *budgetLedger) conds(ops []store.Op) []store.Cond {
	out := make([]store.Cond, 0, len(ops))
	for _, op := range ops {
		out = append(out, store.RevisionIs(op.Key, b.revs[op.Key]))
	}
	return out
}

// wrote records that ops were committed at rev. Called with b.mu held.
func (b *budgetLedger) wrote(ops []store.Op, rev int64) {
	for _, op := range ops {
		if rev > b.revs[op.Key] {
			b.revs[op.Key] = rev
		}
	}
}

// paths are the records ops write.
func paths(ops []store.Op) []string {
	out := make([]string, len(ops))
	for i, op := range ops {
		out[i] = op.Key
	}
	return out
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

// persist writes s's spend durably, by compare-and-swap: errStale when
// another replica wrote the record since this process last saw it (read
// it again, decide again). Called with b.mu held.
func (b *budgetLedger) persist(s policy.Subject) error {
	ops := b.subjectOps(s)
	if len(ops) == 0 {
		return nil
	}
	rev, err := store.TxnRev(context.Background(), b.st, b.conds(ops), ops)
	if errors.Is(err, store.ErrConflict) {
		return errStale
	}
	if err != nil {
		return fmt.Errorf("%w: persist budget spend: %w", ErrUnavailable, err)
	}
	b.wrote(ops, rev)
	delete(b.dirty, s)
	delete(b.pending, s)
	return nil
}

// subjectPaths are the records of s's spend.
func (b *budgetLedger) subjectPaths(s policy.Subject) []string {
	out := []string{subjectPath(s)}
	if _, ok := b.lim.Usage("", s.Key, b.now()); ok {
		out = append(out, sharedPath(s.Key))
	}
	return out
}

// persistFresh writes a change to s's spend that fn makes, reading the
// records again and re-making the change whenever another replica wrote
// them first. fn runs on the state as read; it may run several times.
// Called with b.mu held.
func (b *budgetLedger) persistFresh(s policy.Subject, fn func() error) error {
	for range casAttempts {
		if err := fn(); err != nil {
			return err
		}
		err := b.persist(s)
		if !errors.Is(err, errStale) {
			return err
		}
		if err := b.rereadLocked(context.Background(), b.subjectPaths(s)); err != nil {
			return err
		}
	}
	return fmt.Errorf("%w: budget of %q on %q: lost %d races for its record to other replicas", ErrUnavailable, s.Identity, s.Key, casAttempts)
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
	for range casAttempts {
		err := b.takeOnce(s, n)
		if !errors.Is(err, errStale) {
			return err
		}
		if err := b.rereadLocked(context.Background(), b.subjectPaths(s)); err != nil {
			return err
		}
	}
	return fmt.Errorf("%w: budget of %q on %q: lost %d races for its record to other replicas", ErrUnavailable, identity, key, casAttempts)
}

// takeOnce is one attempt of take on the spend state as this process knows
// it; errStale means another replica wrote the records first and nothing
// was spent. Called with b.mu held.
func (b *budgetLedger) takeOnce(s policy.Subject, n int) error {
	identity, key := s.Identity, s.Key
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
	if wasFrozen {
		return &BudgetError{Err: reason, RetryAfter: retry}
	}
	if errors.Is(reason, policy.ErrFrozen) {
		// A freeze is durable before the refusal that reports it, and then
		// every replica enforces it.
		delete(b.res, s)
		frozenAt := now
		err := b.persistFresh(s, func() error {
			if !b.lim.Freeze(identity, key, frozenAt) {
				return fmt.Errorf("%w: identity %q, key %q", policy.ErrNoBudget, identity, key)
			}
			return nil
		})
		if err != nil {
			return err
		}
	} else if !errors.Is(reason, policy.ErrBatchTooLarge) && !errors.Is(reason, policy.ErrNoBudget) {
		b.pending[s] = append(b.pending[s], now)
		b.dirty[s] = true
	}
	return &BudgetError{Err: reason, RetryAfter: retry}
}

// dropReservation forgets s's unused units without returning them (after a
// freeze, an unfreeze or a budget change: what is left must be re-reserved
// under the budget in force). Called with b.mu held.
func (b *budgetLedger) dropReservation(s policy.Subject) { delete(b.res, s) }

// setFreezeRule puts rule in force for the next refusal (a set-trust
// executed on another replica).
func (b *budgetLedger) setFreezeRule(rule policy.FreezeRule) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.putFreezeRule(rule)
}

// putFreezeRule is setFreezeRule for a caller that holds b.mu.
func (b *budgetLedger) putFreezeRule(rule policy.FreezeRule) error {
	snap := b.lim.Snapshot()
	if snap.Freeze == rule {
		return nil
	}
	snap.Freeze = rule
	l, err := policy.RestoreLimiter(snap)
	if err != nil {
		return err
	}
	b.lim = l
	return nil
}

// flush persists refusal histories changed since the last flush, merged
// into what other replicas wrote.
func (b *budgetLedger) flush(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for s := range b.dirty {
		if err := b.persistFresh(s, func() error { return nil }); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// close gives back unused reservations and flushes.
func (b *budgetLedger) close(ctx context.Context) error {
	b.mu.Lock()
	var errs []error
	for s, r := range b.res {
		delete(b.res, s)
		if r.units <= 0 {
			continue
		}
		units, window := r.units, r.window
		err := b.persistFresh(s, func() error {
			b.lim.Refund(s.Identity, s.Key, units, window, b.now())
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
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
