package governance

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
	"github.com/custodyhq/custody/internal/strictjson"
)

// Replicas. Several custodyd processes may share one store (etcd). Each
// has a Governance over it; they coordinate through the store alone:
//
//   - Every write of gov/state is a compare-and-swap on the revision this
//     process read it at. A replica that loses the race reads the state
//     again (refresh) and decides again; so an approval counts once, a
//     proposal executes once (the write that marks it executed can succeed
//     on one replica only, and its effects outside the store run only
//     after that write), and a disclosure order's uses are counted once.
//   - Follow keeps each replica's state, Snapshot and budget spend in step
//     with what the others write, from the store's watch.
//   - Scheduled work (time-locks that mature) runs on one replica, elected
//     through the store, its writes fenced (ExecuteReadyVia).

// staleAttempts bounds how often one governance action is retried after
// losing races to other replicas.
const staleAttempts = 16

// shared reports whether other replicas may write the store.
func (g *Governance) shared() bool { return store.IsShared(g.o.Store) }

// sync reads the state again before an action on a shared store, so that
// an action follows what another replica did a moment ago. Called with
// g.mu held.
func (g *Governance) sync(ctx context.Context) error {
	if !g.shared() {
		return nil
	}
	return g.refresh(ctx)
}

// retry runs fn, and runs it again on the state as stored now each time
// another replica changed it first (errStale). Called with g.mu held.
func (g *Governance) retry(ctx context.Context, fn func() error) error {
	for attempt := 0; ; attempt++ {
		err := fn()
		if !errors.Is(err, errStale) {
			return err
		}
		if attempt+1 >= staleAttempts {
			return fmt.Errorf("%w: the governance state kept changing (lost %d races to other replicas)", ErrUnavailable, staleAttempts)
		}
		if err := g.refresh(ctx); err != nil {
			return err
		}
		if err := g.budgets.rereadAll(ctx); err != nil {
			return err
		}
	}
}

// refresh reads gov/state and, if another replica wrote it since this
// process read it, makes it the state in force. Called with g.mu held.
func (g *Governance) refresh(ctx context.Context) error {
	kv, err := g.o.Store.Get(ctx, stateKey)
	if errors.Is(err, store.ErrNotFound) {
		if g.stRev != 0 {
			return ErrStateRolledBack
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: governance state: %w", ErrUnavailable, err)
	}
	if kv.Revision <= g.stRev {
		return nil
	}
	st, err := decodeState(kv.Value)
	if err != nil {
		return err
	}
	return g.install(ctx, st, kv.Revision)
}

// install makes st, read from the store at rev, the state in force: the
// ledger, the budgets (spend re-read when they changed) and the Snapshot.
// Called with g.mu held.
func (g *Governance) install(ctx context.Context, st State, rev int64) error {
	var ledger *quorum.Ledger
	if st.Ceremony {
		if st.Ledger == nil {
			return fmt.Errorf("%w: governance state: ceremony recorded without a ledger", store.ErrCorrupt)
		}
		ls := *st.Ledger
		// The lock in force (as set-trust changed it), not the config's at start.
		ls.Options.TimeLock = g.trust(st).TimeLock
		var err error
		if ledger, err = quorum.RestoreLedger(ls); err != nil {
			return fmt.Errorf("governance ledger: %w", err)
		}
		if g.transcript == nil {
			tr, err := loadTranscript(ctx, g.o.Store)
			if err != nil {
				return err
			}
			g.transcript = tr
		}
	}
	if st.Ceremony {
		// The freeze rule in force, as set-trust on any replica changed it.
		if err := g.budgets.setFreezeRule(g.trust(st).Freeze); err != nil {
			return err
		}
	}
	before, after := g.budgetSpecs(g.st), g.budgetSpecs(st)
	g.st, g.stRev, g.ledger = st, rev, ledger
	if !slices.Equal(before, after) || (!g.st.Ceremony && st.Ceremony) {
		if err := g.rebudget(ctx, before, after); err != nil {
			return err
		}
	}
	return g.publish(st)
}

// rebudget installs budgets another replica changed: what this replica
// still held of a changed budget is dropped (it re-reserves under the
// budget in force), and the spend records are read again.
func (g *Governance) rebudget(ctx context.Context, before, after []BudgetEntry) error {
	b := g.budgets
	old := map[policy.Subject]policy.Budget{}
	for _, e := range before {
		old[policy.Subject{Identity: e.Identity, Key: e.Key}] = e.Budget
	}
	b.mu.Lock()
	if err := b.apply(after, g.o.Now()); err != nil {
		b.mu.Unlock()
		return err
	}
	for _, e := range after {
		s := policy.Subject{Identity: e.Identity, Key: e.Key}
		if prev, ok := old[s]; ok && prev == e.Budget {
			continue
		}
		for r := range maps.Clone(b.res) {
			if r == s || (e.Identity == "" && r.Key == e.Key) {
				delete(b.res, r)
			}
		}
	}
	b.revs = map[string]int64{}
	b.mu.Unlock()
	return b.rereadAll(ctx)
}

// Follow keeps this replica's governance state, Snapshot and budget spend
// in step with what other replicas write to the store, until ctx ends: a
// grant revoked, a freeze, a proposal approved or executed through another
// replica is in force here as soon as the store's watch delivers it. It
// watches, then re-reads the state, then applies changes as they come; when
// the watch ends (it lagged, the store was unreachable) it does it again,
// backing off while the store does not answer. onError, if set, hears why
// a round ended.
func (g *Governance) Follow(ctx context.Context, onError func(error)) {
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := g.followOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if onError != nil && err != nil {
			onError(err)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
		if errors.Is(err, store.ErrWatchLagged) {
			wait = 100 * time.Millisecond
		} else {
			wait = min(2*wait, 5*time.Second)
		}
	}
}

func (g *Governance) followOnce(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := g.o.Store.Watch(wctx, govPrefix)
	if err != nil {
		return err
	}
	g.mu.Lock()
	err = g.refresh(ctx)
	g.mu.Unlock()
	if err != nil {
		return err
	}
	if err := g.budgets.rereadAll(ctx); err != nil {
		return err
	}
	for ev := range ch {
		if ev.Err != nil {
			return ev.Err
		}
		if err := g.observe(ctx, ev); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// observe applies one change another replica (or this one) made.
func (g *Governance) observe(ctx context.Context, ev store.Event) error {
	switch k := ev.KV.Key; {
	case k == stateKey:
		if ev.Type != store.OpPut {
			return nil // a deleted state is refused when it is next read
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		if ev.KV.Revision <= g.stRev {
			return nil
		}
		st, err := decodeState(ev.KV.Value)
		if err != nil {
			return err
		}
		return g.install(ctx, st, ev.KV.Revision)
	case k == transcriptKey && ev.Type == store.OpPut:
		var tr StoredTranscript
		if err := strictjson.Unmarshal(ev.KV.Value, &tr); err != nil {
			return fmt.Errorf("%w: ceremony transcript: %v", store.ErrCorrupt, err)
		}
		g.mu.Lock()
		g.transcript = &tr
		g.mu.Unlock()
	case isBudgetPath(k):
		if ev.Type == store.OpDelete {
			g.budgets.observeDeleted(k, ev.KV.Revision)
			return nil
		}
		return g.budgets.observe(ev.KV)
	}
	return nil
}
