package keys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/custodyhq/custody/internal/store"
)

// Follow keeps the registry in step with the store until ctx ends, for
// replicas that share one: a key that another replica created, rotated,
// enabled, disabled, scheduled for destruction or destroyed is installed
// here as soon as the store's watch delivers it, with the token objects of
// its new versions found on the token (a token shared by the replicas
// shows one process the objects another made on its next lookup). A version
// whose object cannot be found fails closed, as at start.
//
// Follow watches, then re-reads every key, then applies changes as they
// come; when the watch ends (it lagged, the store was unreachable) it does
// it again, backing off while the store does not answer. onError, if set,
// hears why a round ended.
func (r *Registry) Follow(ctx context.Context, onError func(error)) {
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := r.followOnce(ctx)
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

// followOnce is one watch of the keys: resync, then events until it ends.
func (r *Registry) followOnce(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := r.st.Watch(wctx, storePrefix)
	if err != nil {
		return err
	}
	if err := r.resync(ctx); err != nil {
		return err
	}
	for ev := range ch {
		if ev.Err != nil {
			return ev.Err
		}
		name := strings.TrimPrefix(ev.KV.Key, storePrefix)
		if ev.Type == store.OpDelete {
			r.remove(name, ev.KV.Revision)
			continue
		}
		if err := r.apply(ctx, name, ev.KV); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// resync installs every stored key newer than its entry here and forgets
// keys no longer stored.
func (r *Registry) resync(ctx context.Context) error {
	kvs, err := r.st.List(ctx, storePrefix, "", 0)
	if err != nil {
		return fmt.Errorf("load keys: %w", err)
	}
	listed := map[string]bool{}
	for _, kv := range kvs {
		name := strings.TrimPrefix(kv.Key, storePrefix)
		listed[name] = true
		if err := r.apply(ctx, name, kv); err != nil {
			return err
		}
	}
	r.mu.RLock()
	var gone []string
	for name := range r.entries {
		if !listed[name] {
			gone = append(gone, name)
		}
	}
	r.mu.RUnlock()
	for _, name := range gone {
		r.writeMu.Lock()
		// Removed only if no write of this process has made it since.
		if _, err := r.st.Get(ctx, storePrefix+name); errors.Is(err, store.ErrNotFound) {
			r.remove(name, 0)
		}
		r.writeMu.Unlock()
	}
	return nil
}

// apply installs the key stored in kv unless the entry here is as new.
func (r *Registry) apply(ctx context.Context, name string, kv store.KV) error {
	r.mu.RLock()
	have, prev := r.revs[name], r.entries[name]
	r.mu.RUnlock()
	if kv.Revision <= have && prev != nil {
		return nil
	}
	var k Key
	if err := json.Unmarshal(kv.Value, &k); err != nil {
		return fmt.Errorf("load key %q: %w", kv.Key, err)
	}
	if err := k.Validate(); err != nil {
		return fmt.Errorf("load key %q: %w", kv.Key, err)
	}
	if k.Name != name {
		return fmt.Errorf("load key %q: %w: record names key %q", kv.Key, ErrInvalidArgument, k.Name)
	}
	e, err := r.entryFor(ctx, &k, prev)
	if err != nil {
		return err
	}
	r.install(e, kv.Revision)
	return nil
}
