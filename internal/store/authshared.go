package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// An authenticated store that several replicas write (see Authenticated).
//
// The view (buckets, sums, anchor, anchorRev) is moved only by the
// follower, which reads every transaction of every writer, this process's
// own included, from one watch of the whole store, in commit order. A
// transaction that writes anchored records also writes the anchor; the
// follower applies it only when the anchor's seal verifies, its revision is
// the view's plus one, each record it writes carries that revision and the
// digest of the view with the records applied equals the anchor's. So the
// view is always a state the HSM vouched for, and it never goes back.
//
// A writer of this process commits an anchored transaction only if the
// anchor is still the one its view holds (a revision condition on
// meta/anchor), then waits until the follower has verified its own
// transaction, so that what it wrote is in the view when Txn returns.

const (
	// authTxnAttempts bounds how often an anchored transaction is retried
	// after another replica moved the anchor first.
	authTxnAttempts = 64
	// catchUpAttempts bounds how often a read re-reads a record that
	// changed while this process caught up with the store.
	catchUpAttempts = 16
)

// errResync asks the follower to read the store again from the start.
var errResync = errors.New("store: view must be re-read")

// Err reports why this process cannot currently follow a shared store
// (nil while it can, and always on a store with one writer): the store
// failed verification when it had to be read again (ErrTampered,
// ErrRolledBack), or could not be read. While it is set, reads of records
// newer than the view and every anchored write fail (closed); it clears
// when the store verifies again.
func (a *AuthStore) Err() error {
	a.vmu.RLock()
	defer a.vmu.RUnlock()
	return a.degraded
}

// openShared opens the view of a shared store and starts following it.
func (a *AuthStore) openShared(ctx context.Context) error {
	a.shared = true
	a.hub = newHub()
	a.advanced = make(chan struct{})
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	wctx, wcancel := context.WithCancel(fctx)
	// Watch first, then read: no transaction falls between the two.
	ch, err := a.inner.Watch(wctx, "")
	if err != nil {
		wcancel()
		cancel()
		return err
	}
	v, err := a.readView(ctx)
	if err != nil {
		wcancel()
		cancel()
		return err
	}
	a.useView(v)
	a.stopFollow = cancel
	a.followDone = make(chan struct{})
	go a.follow(fctx, ch, wcancel)
	if !v.hasAnchor {
		if err := a.reseal(ctx, v.kvs); err != nil {
			cancel()
			<-a.followDone
			return err
		}
	}
	return nil
}

// follow runs the follower until ctx ends or the store closes.
func (a *AuthStore) follow(ctx context.Context, ch <-chan Event, wcancel context.CancelFunc) {
	defer close(a.followDone)
	for {
		f := &follower{a: a}
		err := f.run(ctx, ch)
		wcancel()
		if ctx.Err() != nil || errors.Is(err, ErrClosed) {
			a.hub.close()
			return
		}
		// The watch lagged, ended or could not be verified right now (the
		// HSM or the cluster unreachable): read everything again.
		a.hub.endAll(ErrWatchLagged)
		if ch, wcancel = a.resync(ctx); ch == nil {
			a.hub.close()
			return
		}
	}
}

// final reports verification failures: what someone who can write the
// store but not use the HSM causes.
func final(err error) bool {
	return errors.Is(err, ErrTampered) || errors.Is(err, ErrRolledBack)
}

// resync watches the store again and re-reads the view, retrying with
// backoff until it succeeds or ctx ends (nil). Meanwhile Err says why not.
func (a *AuthStore) resync(ctx context.Context) (<-chan Event, context.CancelFunc) {
	wait := 100 * time.Millisecond
	for {
		if ctx.Err() != nil {
			return nil, nil
		}
		wctx, wcancel := context.WithCancel(ctx)
		ch, err := a.inner.Watch(wctx, "")
		if err == nil {
			var v *view
			if v, err = a.readView(ctx); err == nil {
				err = a.replaceView(v)
				if err == nil {
					return ch, wcancel
				}
			}
		}
		wcancel()
		if errors.Is(err, ErrClosed) {
			return nil, nil
		}
		a.setDegraded(err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, nil
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// replaceView installs a view read afresh, which must not be older than
// the one in force.
func (a *AuthStore) replaceView(v *view) error {
	a.vmu.Lock()
	defer a.vmu.Unlock()
	switch {
	case !v.hasAnchor && a.anchor.Revision > 0:
		return fmt.Errorf("%w: %s is missing (this replica verified revision %d)", ErrRolledBack, AnchorKey, a.anchor.Revision)
	case v.hasAnchor && v.anchor.Revision < a.anchor.Revision:
		return fmt.Errorf("%w: the anchor went back from revision %d to %d", ErrRolledBack, a.anchor.Revision, v.anchor.Revision)
	case !v.hasAnchor:
		a.degraded = nil
		return nil // still empty: the first write anchors it
	}
	a.useView(v)
	a.degraded = nil
	a.signalLocked()
	return nil
}

// setDegraded records why the view cannot be re-read now.
func (a *AuthStore) setDegraded(err error) {
	a.vmu.Lock()
	a.degraded = err
	a.signalLocked()
	a.vmu.Unlock()
}

// signalLocked wakes everyone waiting for the view. Called with a.vmu held
// for writing.
func (a *AuthStore) signalLocked() {
	close(a.advanced)
	a.advanced = make(chan struct{})
}

// waitView waits until cond (evaluated with a.vmu held) holds, ctx ends,
// or FollowTimeout passes (ErrUnavailable, or why the view cannot be
// re-read).
func (a *AuthStore) waitView(ctx context.Context, cond func() bool) error {
	t := time.NewTimer(a.opts.FollowTimeout)
	defer t.Stop()
	for {
		a.vmu.RLock()
		ok, degraded, ch := cond(), a.degraded, a.advanced
		a.vmu.RUnlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if degraded != nil {
				return degraded
			}
			return fmt.Errorf("%w: this replica's verified view of the store did not catch up within %v", ErrUnavailable, a.opts.FollowTimeout)
		}
	}
}

// follower applies the events of one watch to the view, a transaction at
// a time.
type follower struct {
	a *AuthStore
	g group
}

// group is the events of one transaction (one store revision) seen so far.
type group struct {
	rev      int64
	anchor   *Anchor
	changes  map[string]*uint64 // anchored key -> write revision (nil: deleted)
	held     []Event            // verified events of anchored records, delivered once the transaction verifies
	resolved bool
	// bad is set when the transaction cannot be verified: it was not
	// written by a replica (a value that fails its seal, an anchor that
	// goes back, records its anchor does not account for). It is dropped:
	// the view does not move and its records are never delivered, so reads
	// of them fail (ErrTampered, ErrRolledBack) as they would at start.
	bad bool
}

func (f *follower) run(ctx context.Context, ch <-chan Event) error {
	for ev := range ch {
		if ev.Err != nil {
			return ev.Err
		}
		if err := f.event(ctx, ev); err != nil {
			if !final(err) {
				return err
			}
			f.drop(err)
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return ErrWatchLagged
}

func (f *follower) event(ctx context.Context, ev Event) error {
	a := f.a
	r := ev.KV.Revision
	if f.g.rev != 0 && r != f.g.rev {
		if g := f.g; !g.resolved && !g.bad && (g.anchor != nil || len(g.changes) > 0) {
			f.drop(fmt.Errorf("%w: the transaction at store revision %d wrote anchored records that its anchor does not account for", ErrRolledBack, g.rev))
		}
		f.g = group{}
	}
	if f.g.rev == 0 {
		a.vmu.RLock()
		cut := a.anchorRev
		a.vmu.RUnlock()
		if r <= cut {
			return nil // in the view already (read when it was loaded)
		}
	}
	f.g.rev = r
	key := ev.KV.Key
	if f.g.bad && (key == AnchorKey || a.anchored(key)) {
		return nil
	}
	switch {
	case key == AnchorKey:
		if ev.Type != OpPut {
			return fmt.Errorf("%w: %s was deleted at store revision %d", ErrRolledBack, AnchorKey, r)
		}
		if f.g.anchor != nil || f.g.resolved {
			return fmt.Errorf("%w: %s written twice at store revision %d", ErrRolledBack, AnchorKey, r)
		}
		x, err := a.openAnchor(ctx, ev.KV)
		if err != nil {
			return viewError(err)
		}
		f.g.anchor = &x
	case a.anchored(key):
		if f.g.resolved {
			return fmt.Errorf("%w: %q changed at store revision %d after its transaction verified", ErrRolledBack, key, r)
		}
		if f.g.changes == nil {
			f.g.changes = map[string]*uint64{}
		}
		if ev.Type == OpDelete {
			f.g.changes[key] = nil
			f.g.held = append(f.g.held, ev)
			break
		}
		rev, ok := sealedRevision(ev.KV.Value)
		if !ok {
			return fmt.Errorf("%w: key %q at revision %d: pre-anchor format", ErrTampered, key, r)
		}
		kv, err := a.open(ctx, ev.KV)
		if err != nil {
			return viewError(err)
		}
		f.g.changes[key] = &rev
		f.g.held = append(f.g.held, Event{Type: OpPut, KV: kv})
	default:
		// Unanchored: delivered at once, opened for watchers that want it.
		if !a.hub.wants(key) {
			return nil
		}
		if ev.Type == OpPut {
			kv, err := a.open(ctx, ev.KV)
			if err != nil {
				return viewError(err)
			}
			ev.KV = kv
		}
		a.hub.publish([]Event{ev})
		return nil
	}
	if f.g.anchor == nil || f.g.resolved {
		return nil
	}
	return f.resolve()
}

// drop discards the current transaction, which did not verify, and ends
// every watch with why: watchers read again and meet the error there.
func (f *follower) drop(err error) {
	f.g.bad, f.g.held = true, nil
	f.a.hub.endAll(err)
}

// viewError keeps tampering final and makes anything else (the HSM could
// not be asked) a reason to re-read the store later.
func viewError(err error) error {
	if final(err) {
		return err
	}
	return fmt.Errorf("%w: %w", errResync, err)
}

// resolve applies the transaction if its anchor accounts for exactly the
// records it wrote; while records may still be arriving it waits.
func (f *follower) resolve() error {
	a, g := f.a, &f.g
	a.vmu.Lock()
	cur := a.anchor.Revision
	switch {
	case g.anchor.Revision <= cur:
		a.vmu.Unlock()
		return fmt.Errorf("%w: an anchor of revision %d was written after revision %d", ErrRolledBack, g.anchor.Revision, cur)
	case g.anchor.Revision > cur+1:
		a.vmu.Unlock()
		return fmt.Errorf("%w: anchor revision %d follows %d: transactions were missed", errResync, g.anchor.Revision, cur)
	}
	touched := map[int]map[string]uint64{}
	for k, rev := range g.changes {
		b := bucketOf(k)
		if touched[b] == nil {
			touched[b] = maps(a.buckets[b])
		}
		if rev == nil {
			delete(touched[b], k)
			continue
		}
		if *rev != g.anchor.Revision {
			a.vmu.Unlock()
			return fmt.Errorf("%w: %q written at store revision %d carries anchor revision %d, not %d", ErrRolledBack, k, g.rev, *rev, g.anchor.Revision)
		}
		touched[b][k] = *rev
	}
	sums := a.sums
	for b, m := range touched {
		sums[b] = bucketSum(m)
	}
	if digestOf(&sums) != g.anchor.Digest {
		a.vmu.Unlock()
		return nil // not every record of the transaction has arrived yet
	}
	for b, m := range touched {
		a.buckets[b] = m
	}
	a.sums, a.anchor, a.anchorRev = sums, *g.anchor, g.rev
	a.signalLocked()
	a.vmu.Unlock()
	g.resolved = true
	a.hub.publish(g.held)
	g.held = nil
	return nil
}

// viewRev is the view's anchor revision.
func (a *AuthStore) viewRev() uint64 {
	a.vmu.RLock()
	defer a.vmu.RUnlock()
	return a.anchor.Revision
}

// holdsLocked reports whether the view has key at write revision rev
// (found false: the view has no such key). Called with a.vmu held.
func (a *AuthStore) holdsLocked(key string, found bool, rev uint64) bool {
	have, ok := a.buckets[bucketOf(key)][key]
	if !found {
		return !ok
	}
	return ok && have == rev
}

// storeAnchor reads and verifies the anchor in the store now (0 when there
// is none).
func (a *AuthStore) storeAnchor(ctx context.Context) (uint64, error) {
	raw, err := a.inner.Get(ctx, AnchorKey)
	if errors.Is(err, ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	x, err := a.openAnchor(ctx, raw)
	if err != nil {
		return 0, err
	}
	return x.Revision, nil
}

// catchUp is what a read does when a record disagrees with the view: it
// waits for the view to reach the store's anchor. If the view had not
// moved since the read and the store's anchor is the view's, the record
// disagrees with the anchor that covers it: it was rolled back, deleted or
// written outside custodyd.
func (a *AuthStore) catchUp(ctx context.Context, before uint64, key string) error {
	at, err := a.storeAnchor(ctx)
	if err != nil {
		return err
	}
	cur := a.viewRev()
	switch {
	case at < cur:
		return fmt.Errorf("%w: the store's anchor is at revision %d, older than the %d this replica verified", ErrRolledBack, at, cur)
	case at == cur && before == cur:
		return fmt.Errorf("%w: %q does not match the anchor at revision %d", ErrRolledBack, key, cur)
	}
	return a.waitView(ctx, func() bool { return a.anchor.Revision >= at })
}

// getShared is Get on a shared store: an anchored record is returned only
// at the write revision the view holds.
func (a *AuthStore) getShared(ctx context.Context, key string) (KV, error) {
	if !a.anchored(key) {
		kv, err := a.inner.Get(ctx, key)
		if err != nil {
			return KV{}, err
		}
		return a.open(ctx, kv)
	}
	for range catchUpAttempts {
		before := a.viewRev()
		raw, err := a.inner.Get(ctx, key)
		found := err == nil
		if err != nil && !errors.Is(err, ErrNotFound) {
			return KV{}, err
		}
		var kv KV
		var rev uint64
		if found {
			// The seal first: an edited value is tampering, whatever its
			// revision says.
			if kv, err = a.open(ctx, raw); err != nil {
				return KV{}, err
			}
			rev, _ = sealedRevision(raw.Value)
		}
		a.vmu.RLock()
		ok := a.holdsLocked(key, found, rev)
		a.vmu.RUnlock()
		if ok {
			if !found {
				return KV{}, err
			}
			return kv, nil
		}
		if err := a.catchUp(ctx, before, key); err != nil {
			return KV{}, err
		}
	}
	return KV{}, fmt.Errorf("%w: %q kept changing while this replica caught up", ErrUnavailable, key)
}

// listShared is List on a shared store: the anchored records listed must
// be exactly the ones the view holds in the listed range.
func (a *AuthStore) listShared(ctx context.Context, prefix, startAfter string, limit int) ([]KV, error) {
	for range catchUpAttempts {
		before := a.viewRev()
		kvs, err := a.inner.List(ctx, prefix, startAfter, limit)
		if err != nil {
			return nil, err
		}
		out := make([]KV, 0, len(kvs))
		for i := range kvs {
			if kvs[i].Key == AnchorKey {
				continue
			}
			kv, err := a.open(ctx, kvs[i])
			if err != nil {
				return nil, err
			}
			out = append(out, kv)
		}
		bad := a.listMismatch(kvs, prefix, startAfter, limit)
		if bad == "" {
			return out, nil
		}
		if err := a.catchUp(ctx, before, bad); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: %q kept changing while this replica caught up", ErrUnavailable, prefix)
}

// listMismatch names an anchored key on which a listing and the view
// disagree ("" when they agree): a listed record at another write revision,
// or a record the view holds in the listed range that is missing.
func (a *AuthStore) listMismatch(kvs []KV, prefix, startAfter string, limit int) string {
	a.vmu.RLock()
	defer a.vmu.RUnlock()
	seen := make(map[string]bool, len(kvs))
	for _, kv := range kvs {
		if !a.anchored(kv.Key) {
			continue
		}
		rev, ok := sealedRevision(kv.Value)
		if !ok {
			continue // open refuses it
		}
		if !a.holdsLocked(kv.Key, true, rev) {
			return kv.Key
		}
		seen[kv.Key] = true
	}
	full := limit <= 0 || len(kvs) < limit
	last := ""
	if len(kvs) > 0 {
		last = kvs[len(kvs)-1].Key
	}
	var missing []string
	for _, m := range a.buckets {
		for k := range m {
			if !strings.HasPrefix(k, prefix) || k <= startAfter || seen[k] || (!full && k > last) {
				continue
			}
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return missing[0]
	}
	return ""
}

// txnShared is txn on a shared store.
func (a *AuthStore) txnShared(ctx context.Context, conds []Cond, ops []Op, commit func(context.Context, []Cond, []Op) (int64, error)) (int64, error) {
	anchored := slices.ContainsFunc(ops, func(op Op) bool { return a.anchored(op.Key) })
	for attempt := 0; ; attempt++ {
		inConds, err := a.plainConds(ctx, conds)
		if err != nil {
			return 0, err
		}
		if !anchored {
			inOps, err := a.sealOps(ctx, ops, a.viewRev())
			if err != nil {
				return 0, err
			}
			return commit(ctx, inConds, inOps)
		}
		crev, base, err := a.commitAnchored(ctx, inConds, ops, commit)
		if err == nil {
			return crev, nil
		}
		if !errors.Is(err, ErrConflict) {
			return 0, err
		}
		// Did another replica move the anchor, or did the caller's own
		// condition fail?
		at, aerr := a.storeAnchor(ctx)
		if aerr != nil {
			return 0, aerr
		}
		if at < base {
			return 0, fmt.Errorf("%w: the store's anchor is at revision %d, older than the %d this replica verified", ErrRolledBack, at, base)
		}
		if at == base {
			return 0, err
		}
		if attempt+1 >= authTxnAttempts {
			return 0, fmt.Errorf("%w: lost %d races for the store's anchor to other replicas", ErrUnavailable, authTxnAttempts)
		}
		if err := a.waitView(ctx, func() bool { return a.anchor.Revision >= at }); err != nil {
			return 0, err
		}
	}
}

// commitAnchored prepares ops on the view, commits them only if the anchor
// is still the view's, and waits until the follower has verified them. It
// returns the view's anchor revision it was prepared on.
func (a *AuthStore) commitAnchored(ctx context.Context, inConds []Cond, ops []Op, commit func(context.Context, []Cond, []Op) (int64, error)) (int64, uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, err := a.prepare(ctx, ops)
	if err != nil {
		return 0, 0, err
	}
	conds := append(slices.Clone(inConds), RevisionIs(AnchorKey, p.baseRev))
	if len(conds) > MaxTxnOps {
		return 0, p.base, fmt.Errorf("%w: %d conditions, limit %d on a shared store", ErrInvalid, len(inConds), MaxTxnOps-1)
	}
	crev, err := commit(ctx, conds, p.ops)
	if err != nil {
		return 0, p.base, err
	}
	// What this process wrote is in its view before Txn returns.
	if err := a.waitView(ctx, func() bool { return a.anchorRev >= crev }); err != nil {
		return 0, p.base, fmt.Errorf("%w: committed at revision %d but not yet verified here: %w", ErrUnavailable, crev, err)
	}
	return crev, p.base, nil
}
