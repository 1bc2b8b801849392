package policy

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// Budget limits how much one identity×key (or one key, over all identities)
// may do. Both limits apply; there is no unlimited budget.
//
// Rate and Burst define a token bucket: Burst units may be spent at once and
// the bucket refills at Rate units per second. Volume caps the units spent in
// each fixed window of length Window, aligned to the Unix epoch (windows are
// [k·Window, (k+1)·Window)). Fixed windows are exact to persist and cheap to
// check; their known cost is that up to 2·Volume can be spent in a span of
// length Window that straddles a boundary, so set Volume with that in mind.
type Budget struct {
	Rate   float64       `json:"rate"`
	Burst  int           `json:"burst"`
	Volume int64         `json:"volume"`
	Window time.Duration `json:"window"`
}

// Validate refuses budgets that are empty, unlimited or nonsensical.
func (b Budget) Validate() error {
	switch {
	case math.IsNaN(b.Rate) || math.IsInf(b.Rate, 0) || b.Rate <= 0:
		return fmt.Errorf("%w: rate: must be a positive number", ErrInvalidSpec)
	case b.Burst < 1:
		return fmt.Errorf("%w: burst: must be at least 1", ErrInvalidSpec)
	case b.Volume < 1:
		return fmt.Errorf("%w: volume: must be at least 1", ErrInvalidSpec)
	case b.Window < time.Second:
		return fmt.Errorf("%w: window: must be at least 1s", ErrInvalidSpec)
	}
	return nil
}

// Wider reports whether b allows more than cur in any respect: a higher
// rate, a larger burst, a larger volume per window, or a higher average
// volume rate (same volume over a shorter window). Changing to a wider
// budget is a widening governance change.
func (b Budget) Wider(cur Budget) bool {
	if b.Rate > cur.Rate || b.Burst > cur.Burst || b.Volume > cur.Volume {
		return true
	}
	// b.Volume/b.Window > cur.Volume/cur.Window, in floats: exact enough,
	// and immune to int64 overflow.
	return float64(b.Volume)*float64(cur.Window) > float64(cur.Volume)*float64(b.Window)
}

// FreezeRule defines a sustained breach: Refusals budget refusals of one
// identity×key within Within freeze it.
type FreezeRule struct {
	Refusals int           `json:"refusals"`
	Within   time.Duration `json:"within"`
}

// DefaultFreezeRule freezes an identity×key refused 100 times in a minute:
// far beyond a well-behaved client backing off on retryAfter.
var DefaultFreezeRule = FreezeRule{Refusals: 100, Within: time.Minute}

// maxFreezeRefusals bounds the refusal history kept per identity×key.
const maxFreezeRefusals = 10000

// Validate checks the rule.
func (r FreezeRule) Validate() error {
	if r.Refusals < 1 || r.Refusals > maxFreezeRefusals {
		return fmt.Errorf("%w: freeze.refusals: must be between 1 and %d", ErrInvalidSpec, maxFreezeRefusals)
	}
	if r.Within <= 0 {
		return fmt.Errorf("%w: freeze.within: must be positive", ErrInvalidSpec)
	}
	return nil
}

type bucket struct {
	budget      Budget
	tokens      float64
	last        time.Time
	windowStart time.Time
	used        int64
}

func newBucket(b Budget, now time.Time) bucket {
	return bucket{budget: b, tokens: float64(b.Burst), last: now, windowStart: now.Truncate(b.Window)}
}

// advance refills tokens and rolls the volume window forward to now. A
// clock that steps backwards refills nothing and resets nothing.
func (b *bucket) advance(now time.Time) {
	if now.After(b.last) {
		b.tokens = math.Min(float64(b.budget.Burst), b.tokens+now.Sub(b.last).Seconds()*b.budget.Rate)
		b.last = now
	}
	if ws := now.Truncate(b.budget.Window); ws.After(b.windowStart) {
		b.windowStart = ws
		b.used = 0
	}
}

// check reports whether n units fit now, else how long until they might and
// why not. It returns unwrapped sentinels so the caller can compare cheaply.
func (b *bucket) check(n int, now time.Time) (time.Duration, error) {
	if n > b.budget.Burst || int64(n) > b.budget.Volume {
		return 0, ErrBatchTooLarge
	}
	var retry time.Duration
	var reason error
	if b.tokens < float64(n) {
		secs := (float64(n) - b.tokens) / b.budget.Rate
		retry, reason = time.Duration(math.Ceil(secs*float64(time.Second))), ErrRateLimited
	}
	if b.used+int64(n) > b.budget.Volume {
		// The volume cap is the harder limit: report it, and wait for
		// whichever limit frees up last.
		retry, reason = max(retry, b.windowStart.Add(b.budget.Window).Sub(now)), ErrVolumeExceeded
	}
	return retry, reason
}

func (b *bucket) spend(n int) {
	b.tokens -= float64(n)
	b.used += int64(n)
}

type pairState struct {
	bucket
	refusals []time.Time // most recent last, at most rule.Refusals
	frozen   bool
	frozenAt time.Time
}

// Limiter enforces budgets and freezes. It is safe for concurrent use. One
// mutex guards everything because a Take must check and spend the
// identity×key budget and the per-key budget atomically (all or nothing);
// the critical section is a few map lookups and float operations.
type Limiter struct {
	mu    sync.Mutex
	rule  FreezeRule
	pairs map[Subject]*pairState
	keys  map[string]*bucket
}

// NewLimiter returns a Limiter with no budgets: every Take is refused with
// ErrNoBudget until SetBudget is called for that identity×key.
func NewLimiter(rule FreezeRule) (*Limiter, error) {
	if err := rule.Validate(); err != nil {
		return nil, err
	}
	return &Limiter{rule: rule, pairs: map[Subject]*pairState{}, keys: map[string]*bucket{}}, nil
}

// SetBudget sets the budget of identity on key. A new budget starts with a
// full bucket. Changing an existing budget keeps what has been spent: tokens
// are refilled to now at the old rate, then capped at the new burst, and the
// volume used in the current window is kept. A freeze is not lifted.
func (l *Limiter) SetBudget(identity, key string, b Budget, now time.Time) error {
	if identity == "" || key == "" {
		return fmt.Errorf("%w: identity and key are required", ErrInvalidSpec)
	}
	if err := b.Validate(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s := Subject{identity, key}
	if ps, ok := l.pairs[s]; ok {
		ps.bucket = rebudget(ps.bucket, b, now)
		return nil
	}
	l.pairs[s] = &pairState{bucket: newBucket(b, now)}
	return nil
}

// SetKeyBudget sets the budget shared by every identity using key. Per-key
// budgets are optional; identity×key budgets are not.
func (l *Limiter) SetKeyBudget(key string, b Budget, now time.Time) error {
	if key == "" {
		return fmt.Errorf("%w: key is required", ErrInvalidSpec)
	}
	if err := b.Validate(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if kb, ok := l.keys[key]; ok {
		*kb = rebudget(*kb, b, now)
		return nil
	}
	nb := newBucket(b, now)
	l.keys[key] = &nb
	return nil
}

func rebudget(old bucket, b Budget, now time.Time) bucket {
	old.advance(now)
	old.budget = b
	old.tokens = math.Min(old.tokens, float64(b.Burst))
	if ws := now.Truncate(b.Window); ws.After(old.windowStart) {
		// The new window grid may place now in a later window than the old
		// one did; keep the spent volume anyway so re-budgeting never
		// refills.
		old.windowStart = ws
	}
	return old
}

// Take spends n units of identity's budget on key, and of key's shared
// budget if one is set, or refuses them all. A batch of n items costs n and
// is refused whole if it does not fit.
//
// On refusal, reason is ErrRateLimited or ErrVolumeExceeded (retryAfter says
// when the request could first fit), or ErrBatchTooLarge, ErrFrozen,
// ErrNoBudget or ErrInvalidCount (retryAfter 0: retrying will not help).
// Refusals of the identity×key budget count towards a freeze; refusals of
// the shared per-key budget do not, because one identity cannot be blamed
// for the whole key being busy. The refusal that completes a sustained
// breach returns ErrFrozen. The success path does not allocate.
func (l *Limiter) Take(identity, key string, n int, now time.Time) (ok bool, retryAfter time.Duration, reason error) {
	if n < 1 {
		return false, 0, fmt.Errorf("%w: got %d", ErrInvalidCount, n)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ps := l.pairs[Subject{identity, key}]
	if ps == nil {
		return false, 0, fmt.Errorf("%w: identity %q, key %q", ErrNoBudget, identity, key)
	}
	if ps.frozen {
		return false, 0, fmt.Errorf("%w: identity %q, key %q", ErrFrozen, identity, key)
	}
	ps.advance(now)
	if retry, err := ps.check(n, now); err != nil {
		if err != ErrBatchTooLarge && l.recordRefusal(ps, now) {
			return false, 0, fmt.Errorf("%w: identity %q, key %q: sustained breach", ErrFrozen, identity, key)
		}
		return false, retry, fmt.Errorf("%w: identity %q, key %q", err, identity, key)
	}
	kb := l.keys[key]
	if kb != nil {
		kb.advance(now)
		if retry, err := kb.check(n, now); err != nil {
			return false, retry, fmt.Errorf("%w: shared budget of key %q", err, key)
		}
		kb.spend(n)
	}
	ps.spend(n)
	return true, 0, nil
}

// Available reports how many units identity could take on key now without
// a refusal: the least of the identity×key and the key's shared budget, each
// bounded by its tokens, its remaining window volume and its burst. It
// changes nothing and counts no refusal (0 when frozen or without budget).
func (l *Limiter) Available(identity, key string, now time.Time) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	ps := l.pairs[Subject{identity, key}]
	if ps == nil || ps.frozen {
		return 0
	}
	ps.advance(now)
	n := ps.available()
	if kb := l.keys[key]; kb != nil {
		kb.advance(now)
		n = min(n, kb.available())
	}
	return max(n, 0)
}

func (b *bucket) available() int64 {
	return min(int64(math.Floor(b.tokens)), b.budget.Volume-b.used, int64(b.budget.Burst))
}

// WindowStart returns the start of the volume window identity's budget on
// key is in at now (zero without a budget). Units reserved in one window
// must not be spent in the next.
func (l *Limiter) WindowStart(identity, key string, now time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	ps := l.pairs[Subject{identity, key}]
	if ps == nil {
		return time.Time{}
	}
	ps.advance(now)
	return ps.windowStart
}

// Refund gives back n units taken from identity's budget on key (and the
// key's shared budget) that were never used, provided both are still in the
// volume windows they were taken in (windowStart of the identity's). Tokens
// are capped at the burst. It is how a reservation that ends unused returns
// what it held.
func (l *Limiter) Refund(identity, key string, n int, windowStart time.Time, now time.Time) {
	if n <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ps := l.pairs[Subject{identity, key}]
	if ps == nil {
		return
	}
	ps.advance(now)
	if !ps.windowStart.Equal(windowStart) {
		return
	}
	ps.refund(n)
	if kb := l.keys[key]; kb != nil {
		kb.advance(now)
		kb.refund(n)
	}
}

func (b *bucket) refund(n int) {
	b.tokens = math.Min(float64(b.budget.Burst), b.tokens+float64(n))
	b.used = max(0, b.used-int64(n))
}

// SubjectState returns the state of identity's budget on key, and of the
// key's shared budget if one is set, for persisting just that subject.
func (l *Limiter) SubjectState(identity, key string) (SubjectState, *KeyState, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ps := l.pairs[Subject{identity, key}]
	if ps == nil {
		return SubjectState{}, nil, false
	}
	ss := SubjectState{Subject: Subject{identity, key}, Bucket: ps.state(), Refusals: slices.Clone(ps.refusals), Frozen: ps.frozen, FrozenAt: ps.frozenAt}
	var ks *KeyState
	if kb := l.keys[key]; kb != nil {
		ks = &KeyState{Key: key, Bucket: kb.state()}
	}
	return ss, ks, true
}

// PutSubjectState replaces the spend state of one identity×key (from the
// store); its budget stays the one set with SetBudget if there is one.
func (l *Limiter) PutSubjectState(ss SubjectState) error {
	b, err := ss.Bucket.bucket("subject")
	if err != nil {
		return err
	}
	if len(ss.Refusals) > l.rule.Refusals {
		ss.Refusals = ss.Refusals[len(ss.Refusals)-l.rule.Refusals:]
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if old := l.pairs[ss.Subject]; old != nil {
		b.budget = old.budget
		b.tokens = math.Min(b.tokens, float64(b.budget.Burst))
	}
	l.pairs[ss.Subject] = &pairState{bucket: b, refusals: slices.Clone(ss.Refusals), frozen: ss.Frozen, frozenAt: ss.FrozenAt}
	return nil
}

// PutKeyState replaces the spend state of a key's shared budget.
func (l *Limiter) PutKeyState(ks KeyState) error {
	b, err := ks.Bucket.bucket("key")
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if old := l.keys[ks.Key]; old != nil {
		b.budget = old.budget
		b.tokens = math.Min(b.tokens, float64(b.budget.Burst))
	}
	l.keys[ks.Key] = &b
	return nil
}

// Retain forgets every budget not listed (identity "" names a key's shared
// budget), so a spend record left behind by a removed budget can never
// allow anything.
func (l *Limiter) Retain(keep []Subject) {
	set := map[Subject]bool{}
	for _, s := range keep {
		set[s] = true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for s := range l.pairs {
		if !set[s] {
			delete(l.pairs, s)
		}
	}
	for k := range l.keys {
		if !set[Subject{Key: k}] {
			delete(l.keys, k)
		}
	}
}

// Rule returns the freeze rule.
func (l *Limiter) Rule() FreezeRule { return l.rule }

// recordRefusal notes a refusal and reports whether it froze ps.
func (l *Limiter) recordRefusal(ps *pairState, now time.Time) bool {
	if len(ps.refusals) == l.rule.Refusals {
		copy(ps.refusals, ps.refusals[1:])
		ps.refusals = ps.refusals[:len(ps.refusals)-1]
	}
	ps.refusals = append(ps.refusals, now)
	if len(ps.refusals) == l.rule.Refusals && now.Sub(ps.refusals[0]) <= l.rule.Within {
		ps.frozen = true
		ps.frozenAt = now
		ps.refusals = nil
		return true
	}
	return false
}

// Frozen reports whether identity is frozen on key.
func (l *Limiter) Frozen(identity, key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	ps := l.pairs[Subject{identity, key}]
	return ps != nil && ps.frozen
}

// Usage is what a budget has spent, as of a given time.
type Usage struct {
	// WindowUsed is the volume spent in the current window.
	WindowUsed int64
	// WindowEnd is when the current window ends and WindowUsed returns to 0.
	WindowEnd time.Time
	// Available is what the token bucket holds, 0..Burst.
	Available float64
	// Frozen is set for an identity×key frozen after a sustained breach.
	Frozen bool
}

// Usage reports the spend of identity's budget on key (identity "" for the
// key's shared budget) as of now, without spending or changing anything.
// ok is false when no such budget is set, or l is nil.
func (l *Limiter) Usage(identity, key string, now time.Time) (u Usage, ok bool) {
	if l == nil {
		return Usage{}, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var b bucket
	if identity == "" {
		kb := l.keys[key]
		if kb == nil {
			return Usage{}, false
		}
		b = *kb
	} else {
		ps := l.pairs[Subject{identity, key}]
		if ps == nil {
			return Usage{}, false
		}
		b, u.Frozen = ps.bucket, ps.frozen
	}
	b.advance(now) // on a copy: reading never refills the real bucket
	u.WindowUsed, u.WindowEnd, u.Available = b.used, b.windowStart.Add(b.budget.Window), b.tokens
	return u, true
}

// FrozenSubjects lists every frozen identity×key, sorted, for building a
// Policy Spec or reporting.
func (l *Limiter) FrozenSubjects() []Subject {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Subject
	for s, ps := range l.pairs {
		if ps.frozen {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, compareSubject)
	return out
}

// Freeze freezes identity on key as of at, as a sustained breach does. It
// is how a freeze recorded elsewhere (another replica of the vault) is
// kept when the spend state is re-read. It reports false when there is no
// such budget.
func (l *Limiter) Freeze(identity, key string, at time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	ps := l.pairs[Subject{identity, key}]
	if ps == nil {
		return false
	}
	if !ps.frozen {
		ps.frozen, ps.frozenAt, ps.refusals = true, at, nil
	}
	return true
}

// Unfreeze lifts a freeze. It is to be called only when a quorum-approved
// unfreeze proposal executes. The budget is not refilled and the refusal
// history starts afresh.
func (l *Limiter) Unfreeze(identity, key string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	ps := l.pairs[Subject{identity, key}]
	if ps == nil || !ps.frozen {
		return fmt.Errorf("%w: identity %q, key %q", ErrNotFrozen, identity, key)
	}
	ps.frozen = false
	ps.frozenAt = time.Time{}
	ps.refusals = nil
	return nil
}

// BucketState is the persisted state of one budget.
type BucketState struct {
	Budget      Budget    `json:"budget"`
	Tokens      float64   `json:"tokens"`
	Last        time.Time `json:"last"`
	WindowStart time.Time `json:"window_start"`
	WindowUsed  int64     `json:"window_used"`
}

// SubjectState is the persisted state of one identity×key.
type SubjectState struct {
	Subject
	Bucket   BucketState `json:"bucket"`
	Refusals []time.Time `json:"refusals,omitempty"`
	Frozen   bool        `json:"frozen"`
	FrozenAt time.Time   `json:"frozen_at,omitzero"`
}

// KeyState is the persisted state of one per-key budget.
type KeyState struct {
	Key    string      `json:"key"`
	Bucket BucketState `json:"bucket"`
}

// LimiterState is everything a Limiter knows, in a deterministic order.
type LimiterState struct {
	Freeze   FreezeRule     `json:"freeze"`
	Subjects []SubjectState `json:"subjects"`
	Keys     []KeyState     `json:"keys"`
}

func (b *bucket) state() BucketState {
	return BucketState{Budget: b.budget, Tokens: b.tokens, Last: b.last, WindowStart: b.windowStart, WindowUsed: b.used}
}

func (s BucketState) bucket(path string) (bucket, error) {
	if err := s.Budget.Validate(); err != nil {
		return bucket{}, fmt.Errorf("%s.budget: %w", path, err)
	}
	if math.IsNaN(s.Tokens) || s.Tokens > float64(s.Budget.Burst) {
		return bucket{}, fmt.Errorf("%w: %s.tokens: out of range", ErrInvalidSpec, path)
	}
	if s.WindowUsed < 0 {
		return bucket{}, fmt.Errorf("%w: %s.window_used: negative", ErrInvalidSpec, path)
	}
	return bucket{budget: s.Budget, tokens: s.Tokens, last: s.Last, windowStart: s.WindowStart, used: s.WindowUsed}, nil
}

// Snapshot returns the limiter's whole state for persistence.
func (l *Limiter) Snapshot() LimiterState {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := LimiterState{Freeze: l.rule, Subjects: make([]SubjectState, 0, len(l.pairs)), Keys: make([]KeyState, 0, len(l.keys))}
	for s, ps := range l.pairs {
		st.Subjects = append(st.Subjects, SubjectState{
			Subject:  s,
			Bucket:   ps.state(),
			Refusals: slices.Clone(ps.refusals),
			Frozen:   ps.frozen,
			FrozenAt: ps.frozenAt,
		})
	}
	for k, kb := range l.keys {
		st.Keys = append(st.Keys, KeyState{Key: k, Bucket: kb.state()})
	}
	slices.SortFunc(st.Subjects, func(a, b SubjectState) int { return compareSubject(a.Subject, b.Subject) })
	slices.SortFunc(st.Keys, func(a, b KeyState) int { return strings.Compare(a.Key, b.Key) })
	return st
}

// RestoreLimiter rebuilds a Limiter from a Snapshot. Tokens keep refilling
// from the recorded time, so a restart refills only what the elapsed time
// earns, and frozen subjects stay frozen.
func RestoreLimiter(st LimiterState) (*Limiter, error) {
	l, err := NewLimiter(st.Freeze)
	if err != nil {
		return nil, err
	}
	for i, ss := range st.Subjects {
		path := fmt.Sprintf("subjects[%d]", i)
		if ss.Identity == "" || ss.Key == "" {
			return nil, fmt.Errorf("%w: %s: identity and key are required", ErrInvalidSpec, path)
		}
		if _, dup := l.pairs[ss.Subject]; dup {
			return nil, fmt.Errorf("%w: %s: duplicate subject", ErrInvalidSpec, path)
		}
		b, err := ss.Bucket.bucket(path + ".bucket")
		if err != nil {
			return nil, err
		}
		if len(ss.Refusals) > st.Freeze.Refusals {
			return nil, fmt.Errorf("%w: %s.refusals: longer than the freeze rule allows", ErrInvalidSpec, path)
		}
		l.pairs[ss.Subject] = &pairState{bucket: b, refusals: slices.Clone(ss.Refusals), frozen: ss.Frozen, frozenAt: ss.FrozenAt}
	}
	for i, ks := range st.Keys {
		path := fmt.Sprintf("keys[%d]", i)
		if ks.Key == "" {
			return nil, fmt.Errorf("%w: %s.key: empty", ErrInvalidSpec, path)
		}
		if _, dup := l.keys[ks.Key]; dup {
			return nil, fmt.Errorf("%w: %s: duplicate key", ErrInvalidSpec, path)
		}
		b, err := ks.Bucket.bucket(path + ".bucket")
		if err != nil {
			return nil, err
		}
		l.keys[ks.Key] = &b
	}
	return l, nil
}

func compareSubject(a, b Subject) int {
	if c := strings.Compare(a.Identity, b.Identity); c != 0 {
		return c
	}
	return strings.Compare(a.Key, b.Key)
}
