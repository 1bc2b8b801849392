package policy

import (
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newLimiter(t *testing.T, rule FreezeRule) *Limiter {
	t.Helper()
	l, err := NewLimiter(rule)
	if err != nil {
		t.Fatalf("NewLimiter: %v", err)
	}
	return l
}

func mustSet(t *testing.T, l *Limiter, id, key string, b Budget, now time.Time) {
	t.Helper()
	if err := l.SetBudget(id, key, b, now); err != nil {
		t.Fatalf("SetBudget: %v", err)
	}
}

func TestConcurrentTakesSpendExactlyTheBudget(t *testing.T) {
	const n = 40
	tests := []struct {
		name   string
		budget Budget
	}{
		{"burst limits", Budget{Rate: 0.001, Burst: n, Volume: 1 << 40, Window: time.Hour}},
		{"volume limits", Budget{Rate: 1e6, Burst: 1 << 30, Volume: n, Window: time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimiter(t, FreezeRule{Refusals: 10000, Within: time.Nanosecond})
			mustSet(t, l, relayA, keyMsgs, tt.budget, t0)
			var ok atomic.Int64
			var wg sync.WaitGroup
			const goroutines = 64
			total := 50 * n
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := g; i < total; i += goroutines {
						if took, _, _ := l.Take(relayA, keyMsgs, 1, t0); took {
							ok.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			if got := ok.Load(); got != n {
				t.Fatalf("%d of %d takes succeeded, want exactly %d", got, total, n)
			}
		})
	}
}

func TestTakeBatchIsAllOrNothing(t *testing.T) {
	l := newLimiter(t, DefaultFreezeRule)
	mustSet(t, l, relayA, keyMsgs, Budget{Rate: 0.001, Burst: 10, Volume: 1000, Window: time.Hour}, t0)
	if ok, _, err := l.Take(relayA, keyMsgs, 7, t0); !ok {
		t.Fatalf("batch of 7 of 10: %v", err)
	}
	ok, retry, err := l.Take(relayA, keyMsgs, 4, t0)
	if ok || !errors.Is(err, ErrRateLimited) || retry <= 0 {
		t.Fatalf("batch of 4 with 3 left: ok=%v retry=%v err=%v", ok, retry, err)
	}
	// The refused batch spent nothing: exactly 3 remain.
	if ok, _, err := l.Take(relayA, keyMsgs, 3, t0); !ok {
		t.Fatalf("batch of 3 with 3 left: %v", err)
	}
	if ok, _, _ := l.Take(relayA, keyMsgs, 1, t0); ok {
		t.Fatal("take succeeded with an empty bucket")
	}
}

func TestTakeRefusedBySharedKeyBudgetSpendsNothing(t *testing.T) {
	l := newLimiter(t, DefaultFreezeRule)
	mustSet(t, l, relayA, keyMsgs, Budget{Rate: 0.001, Burst: 10, Volume: 1000, Window: time.Hour}, t0)
	if err := l.SetKeyBudget(keyMsgs, Budget{Rate: 0.001, Burst: 5, Volume: 1000, Window: time.Hour}, t0); err != nil {
		t.Fatal(err)
	}
	if ok, _, err := l.Take(relayA, keyMsgs, 6, t0); ok || !errors.Is(err, ErrBatchTooLarge) {
		t.Fatalf("6 against key burst 5: ok=%v err=%v", ok, err)
	}
	if ok, _, err := l.Take(relayA, keyMsgs, 5, t0); !ok {
		t.Fatalf("5: %v", err)
	}
	if ok, _, err := l.Take(relayA, keyMsgs, 1, t0); ok || !errors.Is(err, ErrRateLimited) {
		t.Fatalf("key exhausted: ok=%v err=%v", ok, err)
	}
	// The identity's own bucket still holds 5.
	if err := l.SetKeyBudget(keyMsgs, Budget{Rate: 0.001, Burst: 100, Volume: 1000, Window: time.Hour}, t0); err != nil {
		t.Fatal(err)
	}
	if ok, _, _ := l.Take(relayA, keyMsgs, 6, t0); ok {
		t.Fatal("identity bucket was refilled or not charged")
	}
}

func TestTakeRefillsAtRate(t *testing.T) {
	l := newLimiter(t, DefaultFreezeRule)
	mustSet(t, l, relayA, keyMsgs, Budget{Rate: 2, Burst: 1, Volume: 1000, Window: time.Hour}, t0)
	if ok, _, _ := l.Take(relayA, keyMsgs, 1, t0); !ok {
		t.Fatal("first take refused")
	}
	ok, retry, err := l.Take(relayA, keyMsgs, 1, t0)
	if ok || !errors.Is(err, ErrRateLimited) || retry != 500*time.Millisecond {
		t.Fatalf("second take: ok=%v retry=%v err=%v, want refused with retry 500ms", ok, retry, err)
	}
	if ok, _, _ := l.Take(relayA, keyMsgs, 1, t0.Add(499*time.Millisecond)); ok {
		t.Fatal("took before a token was earned")
	}
	if ok, _, err := l.Take(relayA, keyMsgs, 1, t0.Add(1000*time.Millisecond)); !ok {
		t.Fatalf("take after refill: %v", err)
	}
}

func TestTakeVolumeCapHoldsUntilWindowEnds(t *testing.T) {
	l := newLimiter(t, DefaultFreezeRule)
	mustSet(t, l, relayA, keyMsgs, Budget{Rate: 1000, Burst: 100, Volume: 3, Window: time.Hour}, t0)
	now := t0.Add(20 * time.Minute)
	if ok, _, err := l.Take(relayA, keyMsgs, 3, now); !ok {
		t.Fatal(err)
	}
	ok, retry, err := l.Take(relayA, keyMsgs, 1, now.Add(time.Minute))
	if ok || !errors.Is(err, ErrVolumeExceeded) || retry != 39*time.Minute {
		t.Fatalf("over volume: ok=%v retry=%v err=%v, want retry 39m", ok, retry, err)
	}
	if ok, _, err := l.Take(relayA, keyMsgs, 3, t0.Add(time.Hour)); !ok {
		t.Fatalf("next window: %v", err)
	}
}

func TestTakeRefusesWithoutRetryWhenRetryCannotHelp(t *testing.T) {
	l := newLimiter(t, FreezeRule{Refusals: 2, Within: time.Hour})
	mustSet(t, l, relayA, keyMsgs, Budget{Rate: 1, Burst: 5, Volume: 100, Window: time.Hour}, t0)
	tests := []struct {
		name     string
		identity string
		n        int
		want     error
	}{
		{"batch above burst", relayA, 6, ErrBatchTooLarge},
		{"zero count", relayA, 0, ErrInvalidCount},
		{"negative count", relayA, -1, ErrInvalidCount},
		{"no budget", relayB, 1, ErrNoBudget},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, retry, err := l.Take(tt.identity, keyMsgs, tt.n, t0)
			if ok || retry != 0 || !errors.Is(err, tt.want) {
				t.Fatalf("ok=%v retry=%v err=%v, want %v", ok, retry, err, tt.want)
			}
		})
	}
	// Oversized batches are client bugs, not a breach: no freeze.
	if l.Frozen(relayA, keyMsgs) {
		t.Fatal("oversized batches froze the identity")
	}
}

func TestSustainedBreachFreezesUntilUnfreeze(t *testing.T) {
	l := newLimiter(t, FreezeRule{Refusals: 5, Within: 10 * time.Second})
	b := Budget{Rate: 1, Burst: 2, Volume: 1000, Window: time.Hour}
	mustSet(t, l, relayA, keyMsgs, b, t0)
	mustSet(t, l, relayB, keyMsgs, b, t0)
	l.Take(relayA, keyMsgs, 2, t0)
	now := t0
	for i := range 4 {
		now = now.Add(100 * time.Millisecond)
		if ok, _, err := l.Take(relayA, keyMsgs, 2, now); ok || !errors.Is(err, ErrRateLimited) {
			t.Fatalf("refusal %d: ok=%v err=%v", i+1, ok, err)
		}
	}
	if l.Frozen(relayA, keyMsgs) {
		t.Fatal("frozen before the fifth refusal")
	}
	if ok, _, err := l.Take(relayA, keyMsgs, 2, now.Add(100*time.Millisecond)); ok || !errors.Is(err, ErrFrozen) {
		t.Fatalf("fifth refusal: ok=%v err=%v, want ErrFrozen", ok, err)
	}
	// Long after the bucket has refilled, still frozen.
	later := now.Add(24 * time.Hour)
	if ok, retry, err := l.Take(relayA, keyMsgs, 1, later); ok || retry != 0 || !errors.Is(err, ErrFrozen) {
		t.Fatalf("take while frozen: ok=%v retry=%v err=%v", ok, retry, err)
	}
	if ok, _, err := l.Take(relayB, keyMsgs, 1, later); !ok {
		t.Fatalf("other identity affected by freeze: %v", err)
	}
	if got := l.FrozenSubjects(); len(got) != 1 || got[0] != (Subject{relayA, keyMsgs}) {
		t.Fatalf("FrozenSubjects = %v", got)
	}
	if err := l.Unfreeze(relayA, keyMsgs); err != nil {
		t.Fatal(err)
	}
	if err := l.Unfreeze(relayA, keyMsgs); !errors.Is(err, ErrNotFrozen) {
		t.Fatalf("second Unfreeze: %v, want ErrNotFrozen", err)
	}
	if ok, _, err := l.Take(relayA, keyMsgs, 1, later); !ok {
		t.Fatalf("take after unfreeze: %v", err)
	}
}

func TestSpacedOutRefusalsDoNotFreeze(t *testing.T) {
	l := newLimiter(t, FreezeRule{Refusals: 3, Within: 10 * time.Second})
	mustSet(t, l, relayA, keyMsgs, Budget{Rate: 0.01, Burst: 1, Volume: 1000, Window: time.Hour}, t0)
	l.Take(relayA, keyMsgs, 1, t0)
	for i := range 10 {
		now := t0.Add(time.Duration(i) * 6 * time.Second)
		if _, _, err := l.Take(relayA, keyMsgs, 1, now); errors.Is(err, ErrFrozen) {
			t.Fatalf("frozen at refusal %d although no 3 fell within 10s", i+1)
		}
	}
}

func TestSharedKeyBudgetRefusalsDoNotFreezeIdentity(t *testing.T) {
	l := newLimiter(t, FreezeRule{Refusals: 2, Within: time.Hour})
	mustSet(t, l, relayA, keyMsgs, Budget{Rate: 0.001, Burst: 100, Volume: 1000, Window: time.Hour}, t0)
	if err := l.SetKeyBudget(keyMsgs, Budget{Rate: 0.001, Burst: 1, Volume: 1000, Window: time.Hour}, t0); err != nil {
		t.Fatal(err)
	}
	l.Take(relayA, keyMsgs, 1, t0)
	for range 5 {
		l.Take(relayA, keyMsgs, 1, t0)
	}
	if l.Frozen(relayA, keyMsgs) {
		t.Fatal("identity frozen for the key's shared budget")
	}
}

func TestSetBudgetDoesNotRefill(t *testing.T) {
	l := newLimiter(t, DefaultFreezeRule)
	mustSet(t, l, relayA, keyMsgs, Budget{Rate: 0.001, Burst: 5, Volume: 5, Window: time.Hour}, t0)
	l.Take(relayA, keyMsgs, 5, t0)
	mustSet(t, l, relayA, keyMsgs, Budget{Rate: 0.001, Burst: 50, Volume: 6, Window: time.Hour}, t0)
	if ok, _, err := l.Take(relayA, keyMsgs, 1, t0); ok || !errors.Is(err, ErrRateLimited) {
		t.Fatalf("raised burst refilled the bucket: ok=%v err=%v", ok, err)
	}
}

func TestSnapshotRestoreKeepsSpentBudgetAndFreezes(t *testing.T) {
	// relay-b breaches within a second; relay-a's refusals below are seconds apart.
	rule := FreezeRule{Refusals: 2, Within: time.Second}
	l := newLimiter(t, rule)
	b := Budget{Rate: 1, Burst: 10, Volume: 15, Window: time.Hour}
	mustSet(t, l, relayA, keyMsgs, b, t0)
	mustSet(t, l, relayB, keyMsgs, Budget{Rate: 1, Burst: 1, Volume: 100, Window: time.Hour}, t0)
	if err := l.SetKeyBudget(keyMsgs, Budget{Rate: 100, Burst: 1000, Volume: 10000, Window: time.Hour}, t0); err != nil {
		t.Fatal(err)
	}
	l.Take(relayA, keyMsgs, 10, t0)
	l.Take(relayB, keyMsgs, 1, t0)
	l.Take(relayB, keyMsgs, 1, t0)
	l.Take(relayB, keyMsgs, 1, t0)
	if !l.Frozen(relayB, keyMsgs) {
		t.Fatal("setup: relay-b not frozen")
	}

	raw, err := json.Marshal(l.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var st LimiterState
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	r, err := RestoreLimiter(st)
	if err != nil {
		t.Fatalf("RestoreLimiter: %v", err)
	}
	if ok, _, _ := r.Take(relayA, keyMsgs, 1, t0); ok {
		t.Fatal("restart refilled the token bucket")
	}
	if !r.Frozen(relayB, keyMsgs) {
		t.Fatal("restart unfroze relay-b")
	}
	// Three seconds of rate earn three tokens, no more.
	if ok, _, _ := r.Take(relayA, keyMsgs, 4, t0.Add(3*time.Second)); ok {
		t.Fatal("took 4 after earning 3")
	}
	if ok, _, err := r.Take(relayA, keyMsgs, 3, t0.Add(3*time.Second)); !ok {
		t.Fatalf("took 3 after earning 3: %v", err)
	}
	// Volume: 13 of 15 spent in this window, so a batch of 3 is over it.
	if ok, _, err := r.Take(relayA, keyMsgs, 3, t0.Add(10*time.Second)); ok || !errors.Is(err, ErrVolumeExceeded) {
		t.Fatalf("restart reset the volume window: ok=%v err=%v", ok, err)
	}
	again, _ := json.Marshal(r.Snapshot())
	var st2 LimiterState
	json.Unmarshal(again, &st2)
	if len(st2.Subjects) != 2 || len(st2.Keys) != 1 || st2.Subjects[0].Identity != relayA {
		t.Fatalf("restored snapshot lost or misordered state: %s", again)
	}
}

func TestRestoreRefusesCorruptState(t *testing.T) {
	good := func() LimiterState {
		l := newLimiter(t, DefaultFreezeRule)
		mustSet(t, l, relayA, keyMsgs, Budget{Rate: 1, Burst: 5, Volume: 5, Window: time.Hour}, t0)
		return l.Snapshot()
	}
	tests := []struct {
		name   string
		mutate func(*LimiterState)
	}{
		{"no freeze rule", func(s *LimiterState) { s.Freeze = FreezeRule{} }},
		{"tokens above burst", func(s *LimiterState) { s.Subjects[0].Bucket.Tokens = 6 }},
		{"unlimited budget", func(s *LimiterState) { s.Subjects[0].Bucket.Budget.Volume = 0 }},
		{"negative usage", func(s *LimiterState) { s.Subjects[0].Bucket.WindowUsed = -1 }},
		{"duplicate subject", func(s *LimiterState) { s.Subjects = append(s.Subjects, s.Subjects[0]) }},
		{"empty identity", func(s *LimiterState) { s.Subjects[0].Identity = "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := good()
			tt.mutate(&st)
			if _, err := RestoreLimiter(st); !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("err = %v, want ErrInvalidSpec", err)
			}
		})
	}
}

func TestBudgetValidateRefusesUnlimitedOrEmpty(t *testing.T) {
	for _, b := range []Budget{
		{},
		{Rate: 1, Burst: 1, Volume: 1},
		{Rate: 0, Burst: 1, Volume: 1, Window: time.Hour},
		{Rate: 1, Burst: 0, Volume: 1, Window: time.Hour},
		{Rate: 1, Burst: 1, Volume: 0, Window: time.Hour},
	} {
		if err := b.Validate(); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalidSpec", b, err)
		}
	}
}

func TestBudgetWider(t *testing.T) {
	cur := Budget{Rate: 10, Burst: 20, Volume: 1000, Window: time.Hour}
	tests := []struct {
		name string
		b    Budget
		want bool
	}{
		{"same", cur, false},
		{"higher rate", Budget{Rate: 11, Burst: 20, Volume: 1000, Window: time.Hour}, true},
		{"larger burst", Budget{Rate: 10, Burst: 21, Volume: 1000, Window: time.Hour}, true},
		{"larger volume", Budget{Rate: 10, Burst: 20, Volume: 1001, Window: time.Hour}, true},
		{"shorter window", Budget{Rate: 10, Burst: 20, Volume: 1000, Window: time.Minute}, true},
		{"longer window", Budget{Rate: 10, Burst: 20, Volume: 1000, Window: 2 * time.Hour}, false},
		{"all lower", Budget{Rate: 1, Burst: 2, Volume: 10, Window: time.Hour}, false},
	}
	for _, tt := range tests {
		if got := tt.b.Wider(cur); got != tt.want {
			t.Errorf("%s: Wider = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func BenchmarkTake(b *testing.B) {
	l, _ := NewLimiter(DefaultFreezeRule)
	l.SetBudget(relayA, keyMsgs, Budget{Rate: 1e12, Burst: 1 << 30, Volume: 1 << 62, Window: time.Hour}, t0)
	b.ReportAllocs()
	for b.Loop() {
		l.Take(relayA, keyMsgs, 1, t0)
	}
}

func TestUsageReportsSpendWithoutSpendingOrRefilling(t *testing.T) {
	l := newLimiter(t, FreezeRule{Refusals: 3, Within: time.Minute})
	b := Budget{Rate: 1, Burst: 10, Volume: 100, Window: time.Hour}
	mustSet(t, l, "relay", "k", b, t0)
	if err := l.SetKeyBudget("k", Budget{Rate: 5, Burst: 50, Volume: 1000, Window: 24 * time.Hour}, t0); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Usage("stranger", "k", t0); ok {
		t.Fatal("usage reported for an identity without a budget")
	}
	if ok, _, err := l.Take("relay", "k", 7, t0); !ok {
		t.Fatal(err)
	}
	u, ok := l.Usage("relay", "k", t0.Add(2*time.Second))
	if !ok || u.WindowUsed != 7 || u.Available != 5 || u.Frozen || !u.WindowEnd.Equal(t0.Truncate(time.Hour).Add(time.Hour)) {
		t.Fatalf("usage = %+v, %v; want 7 used, 3+2 tokens, window end at the next hour", u, ok)
	}
	// Reading twice at the same time gives the same answer: nothing refilled.
	if again, _ := l.Usage("relay", "k", t0.Add(2*time.Second)); again != u {
		t.Fatalf("second read %+v differs from %+v", again, u)
	}
	shared, ok := l.Usage("", "k", t0)
	if !ok || shared.WindowUsed != 7 || shared.Available != 43 {
		t.Fatalf("shared usage = %+v, %v", shared, ok)
	}
	// After the window the volume is 0 again.
	if later, _ := l.Usage("relay", "k", t0.Add(time.Hour)); later.WindowUsed != 0 {
		t.Fatalf("next window still shows %d used", later.WindowUsed)
	}
	// A freeze shows.
	for range 3 {
		l.Take("relay", "k", 11, t0.Add(3*time.Second)) // batch too large: not counted
		l.Take("relay", "k", 10, t0.Add(3*time.Second))
	}
	if u, _ := l.Usage("relay", "k", t0.Add(3*time.Second)); !u.Frozen {
		t.Fatalf("usage after a sustained breach = %+v, want frozen", u)
	}
}
