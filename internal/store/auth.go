package store

import (
	"context"
	"errors"
	"fmt"
)

// Sealer authenticates stored values. Seal must bind the key name into its
// output so that a value copied to another key fails Open. The production
// sealer is HSM-backed (an HMAC or AES-GCM key that never leaves the token);
// the sealed form is what the backend stores.
type Sealer interface {
	// Seal returns the stored form of value under key.
	Seal(key string, value []byte) ([]byte, error)
	// Open verifies sealed under key and returns the value. It fails when
	// sealed was not produced by Seal for this key.
	Open(key string, sealed []byte) ([]byte, error)
}

// authStore seals every value on the way in and opens it on the way out.
type authStore struct {
	inner  Store
	sealer Sealer
}

// Authenticated wraps s so that every value is sealed by sealer, bound to
// its key name, and verified on every read, list and watch event; a value
// that fails verification is reported as ErrTampered. This detects edits of
// the backing file or cluster and values moved between keys. It does not
// detect a deleted key, nor a key rolled back to an older value it once held
// (sealed values carry no revision): those need the audit log.
//
// ValueIs conditions compare plaintext: Txn reads and verifies the current
// value and turns the condition into a revision check, so it stays atomic.
// The sealer's overhead counts against MaxValueSize.
func Authenticated(s Store, sealer Sealer) Store {
	return &authStore{inner: s, sealer: sealer}
}

func (a *authStore) open(kv KV) (KV, error) {
	v, err := a.sealer.Open(kv.Key, kv.Value)
	if err != nil {
		// The sealer's own error is dropped: it may describe the value.
		return KV{}, fmt.Errorf("%w: key %q at revision %d", ErrTampered, kv.Key, kv.Revision)
	}
	kv.Value = v
	return kv, nil
}

// Get implements Store.
func (a *authStore) Get(ctx context.Context, key string) (KV, error) {
	kv, err := a.inner.Get(ctx, key)
	if err != nil {
		return KV{}, err
	}
	return a.open(kv)
}

// List implements Store. One tampered value fails the whole list.
func (a *authStore) List(ctx context.Context, prefix, startAfter string, limit int) ([]KV, error) {
	kvs, err := a.inner.List(ctx, prefix, startAfter, limit)
	if err != nil {
		return nil, err
	}
	for i := range kvs {
		if kvs[i], err = a.open(kvs[i]); err != nil {
			return nil, err
		}
	}
	return kvs, nil
}

// Txn implements Store.
func (a *authStore) Txn(ctx context.Context, conds []Cond, ops []Op) error {
	inConds, inOps, err := a.prepare(ctx, conds, ops)
	if err != nil {
		return err
	}
	return a.inner.Txn(ctx, inConds, inOps)
}

// prepare turns a transaction on plaintext into one on sealed values.
func (a *authStore) prepare(ctx context.Context, conds []Cond, ops []Op) ([]Cond, []Op, error) {
	if err := checkTxn(conds, ops); err != nil {
		return nil, nil, err
	}
	inConds := make([]Cond, len(conds))
	for i, c := range conds {
		if c.Type != CondValue {
			inConds[i] = c
			continue
		}
		kv, err := a.Get(ctx, c.Key)
		switch {
		case errors.Is(err, ErrNotFound):
			return nil, nil, fmt.Errorf("%w: value condition on %q", ErrConflict, c.Key)
		case err != nil:
			return nil, nil, err
		case !condHolds(c, true, kv.Value, kv.Revision):
			return nil, nil, fmt.Errorf("%w: value condition on %q", ErrConflict, c.Key)
		}
		inConds[i] = RevisionIs(c.Key, kv.Revision)
	}
	inOps := make([]Op, len(ops))
	for i, op := range ops {
		inOps[i] = op
		if op.Type != OpPut {
			continue
		}
		sealed, err := a.sealer.Seal(op.Key, op.Value)
		if err != nil {
			return nil, nil, fmt.Errorf("store: seal %q: %w", op.Key, err)
		}
		inOps[i].Value = sealed
	}
	return inConds, inOps, nil
}

// Watch implements Store. A tampered value in an event ends the watch with
// a final ErrTampered event.
func (a *authStore) Watch(ctx context.Context, prefix string) (<-chan Event, error) {
	ctx, cancel := context.WithCancel(ctx)
	in, err := a.inner.Watch(ctx, prefix)
	if err != nil {
		cancel()
		return nil, err
	}
	// Unbuffered: backpressure lands on the inner watcher's buffer, which
	// ends with ErrWatchLagged rather than blocking writers.
	out := make(chan Event)
	go func() {
		defer close(out)
		defer cancel() // ends the inner watch when we stop early
		for ev := range in {
			if ev.Err == nil && ev.Type == OpPut {
				kv, err := a.open(ev.KV)
				if err != nil {
					ev = Event{Err: err}
				} else {
					ev.KV = kv
				}
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
			if ev.Err != nil {
				return
			}
		}
	}()
	return out, nil
}

// Revision implements Store.
func (a *authStore) Revision(ctx context.Context) (int64, error) { return a.inner.Revision(ctx) }

// Close implements Store; it closes the wrapped store.
func (a *authStore) Close() error { return a.inner.Close() }

// update implements updater when the wrapped store does: fn sees and
// returns plaintext; the stored value is verified before and sealed after.
func (a *authStore) update(ctx context.Context, key string, fn func(old []byte) ([]byte, error)) error {
	u, ok := a.inner.(updater)
	if !ok {
		return updateLoop(ctx, a, key, fn)
	}
	return u.update(ctx, key, func(sealed []byte) ([]byte, error) {
		var old []byte
		if sealed != nil {
			kv, err := a.open(KV{Key: key, Value: sealed})
			if err != nil {
				return nil, err
			}
			old = kv.Value
		}
		v, err := fn(old)
		if err != nil {
			return nil, err
		}
		out, err := a.sealer.Seal(key, v)
		if err != nil {
			return nil, fmt.Errorf("store: seal %q: %w", key, err)
		}
		return out, nil
	})
}
