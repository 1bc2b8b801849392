package keys

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/store"
)

// Registry errors (in addition to the model's).
var (
	// ErrKeyNotFound reports a key name the registry does not hold.
	ErrKeyNotFound = errors.New("key not found")
	// ErrKeyExists reports a create of a name already taken.
	ErrKeyExists = errors.New("key already exists")
	// ErrKeyMaterialMissing reports a live version whose HSM object is gone:
	// the store and the token disagree, and the version fails closed.
	ErrKeyMaterialMissing = errors.New("key material missing from the hsm")
)

// storePrefix is where key metadata lives in the store.
const storePrefix = "keys/"

// Entry is an immutable snapshot of one key and the HSM objects of its live
// versions. A new Entry replaces the old one on every change, so readers on
// the hot path take it under a read lock and never see a half-made change.
type Entry struct {
	Key *Key
	hsm map[uint32]hsm.Key
}

// HSMKey returns the HSM object of version n, or ErrKeyMaterialMissing.
func (e *Entry) HSMKey(n uint32) (hsm.Key, error) {
	k, ok := e.hsm[n]
	if !ok {
		return hsm.Key{}, fmt.Errorf("%w: %s version %d", ErrKeyMaterialMissing, e.Key.Name, n)
	}
	return k, nil
}

// RegistryOptions tunes a Registry.
type RegistryOptions struct {
	Now     func() time.Time // default time.Now
	Destroy DestroyWindow    // bounds on destruction waits
	Logger  *slog.Logger
}

// Registry holds Custody's named, versioned keys: metadata in the store (never
// key material), objects in the HSM. It is safe for concurrent use. Writes go
// to the store with compare-and-swap before the in-memory view changes.
type Registry struct {
	st   store.Store
	m    *hsm.Module
	opts RegistryOptions

	mu      sync.RWMutex
	entries map[string]*Entry
	writeMu sync.Mutex // serialises changes made by this process
}

// KindOf maps a purpose to the HSM key kind that implements it.
func KindOf(p Purpose) (hsm.Kind, bool) {
	switch p {
	case PurposeEncryptAES256GCM:
		return hsm.KindAES256, true
	case PurposeMACHMACSHA256:
		return hsm.KindHMACSHA256, true
	case PurposeSignECDSAP256:
		return hsm.KindECDSAP256, true
	case PurposeSignECDSAP384:
		return hsm.KindECDSAP384, true
	case PurposeSignEd25519:
		return hsm.KindEd25519, true
	case PurposeSignRSAPSS3072:
		return hsm.KindRSA3072PSS, true
	}
	return hsm.KindInvalid, false
}

// OpenRegistry loads every key from the store and finds the HSM object of
// each live version, caching its handle so no request searches the token.
// A version whose object is missing is reported and fails closed; it does
// not stop the other keys from loading.
func OpenRegistry(ctx context.Context, st store.Store, m *hsm.Module, opts RegistryOptions) (*Registry, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	r := &Registry{st: st, m: m, opts: opts, entries: map[string]*Entry{}}
	kvs, err := st.List(ctx, storePrefix, "", 0)
	if err != nil {
		return nil, fmt.Errorf("load keys: %w", err)
	}
	if len(kvs) > 0 {
		// One scan of the token instead of a search per key version.
		if _, err := m.Index(ctx); err != nil {
			return nil, fmt.Errorf("index token: %w", err)
		}
	}
	for _, kv := range kvs {
		var k Key
		if err := json.Unmarshal(kv.Value, &k); err != nil {
			return nil, fmt.Errorf("load key %q: %w", kv.Key, err)
		}
		if err := k.Validate(); err != nil {
			return nil, fmt.Errorf("load key %q: %w", kv.Key, err)
		}
		e, err := r.entryFor(ctx, &k)
		if err != nil {
			return nil, err
		}
		r.entries[k.Name] = e
	}
	return r, nil
}

// entryFor builds an Entry, finding the HSM object of every live version.
func (r *Registry) entryFor(ctx context.Context, k *Key) (*Entry, error) {
	kind, ok := KindOf(k.Purpose)
	if !ok {
		return nil, fmt.Errorf("key %q: %w: purpose %v", k.Name, ErrInvalidArgument, k.Purpose)
	}
	e := &Entry{Key: k, hsm: make(map[uint32]hsm.Key, len(k.Versions))}
	for _, v := range k.Versions {
		if v.State == StateDestroyed {
			continue
		}
		hk := hsm.Key{ID: v.HSMID, Label: v.HSMLabel, Kind: kind}
		if err := r.m.Find(ctx, hk); err != nil {
			if errors.Is(err, hsm.ErrNotFound) {
				r.opts.Logger.Error("key version's hsm object is missing; it will fail closed",
					"key", k.Name, "version", v.Number, "hsm_id", hex.EncodeToString(v.HSMID))
				continue
			}
			return nil, fmt.Errorf("key %q version %d: %w", k.Name, v.Number, err)
		}
		e.hsm[v.Number] = hk
	}
	return e, nil
}

// Get returns the current snapshot of a key.
func (r *Registry) Get(name string) (*Entry, error) {
	r.mu.RLock()
	e, ok := r.entries[name]
	r.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrKeyNotFound, name)
	}
	return e, nil
}

// List returns up to limit keys whose names sort after `after`, in name
// order, and whether more follow.
func (r *Registry) List(after string, limit int) ([]*Key, bool) {
	r.mu.RLock()
	names := make([]string, 0, len(r.entries))
	for n := range r.entries {
		if n > after {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	more := limit > 0 && len(names) > limit
	if more {
		names = names[:limit]
	}
	out := make([]*Key, len(names))
	for i, n := range names {
		out[i] = r.entries[n].Key
	}
	r.mu.RUnlock()
	return out, more
}

// Len is the number of keys.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.entries)
}

// CountByState counts versions in each state, for metrics.
func (r *Registry) CountByState() map[State]int {
	out := map[State]int{}
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, e := range r.entries {
		for _, v := range e.Key.Versions {
			out[v.State]++
		}
	}
	return out
}

func hsmLabel(id []byte, version uint32) string {
	return fmt.Sprintf("custody:%s:v%d", hex.EncodeToString(id), version)
}

// Create makes a new key with one version generated in the HSM.
func (r *Registry) Create(ctx context.Context, name string, p Purpose, description string) (*Key, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	kind, ok := KindOf(p)
	if !ok {
		return nil, fmt.Errorf("%w: purpose must be one of %s", ErrInvalidArgument, strings.Join(purposeList(), ", "))
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	if _, err := r.Get(name); err == nil {
		return nil, fmt.Errorf("%w: %q", ErrKeyExists, name)
	}
	k, err := NewKey(NewKeyID(), name, p, description, r.opts.Now())
	if err != nil {
		return nil, err
	}
	hk, err := r.newVersion(ctx, k, kind)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(k)
	if err != nil {
		return nil, err
	}
	if err := store.Create(ctx, r.st, storePrefix+name, b); err != nil {
		_ = r.m.Destroy(context.WithoutCancel(ctx), hk)
		if errors.Is(err, store.ErrExists) {
			return nil, fmt.Errorf("%w: %q", ErrKeyExists, name)
		}
		return nil, fmt.Errorf("store key %q: %w", name, err)
	}
	r.install(&Entry{Key: k, hsm: map[uint32]hsm.Key{k.Primary: hk}})
	return k, nil
}

// newVersion generates the next version's HSM object and adds it to k
// (which the caller owns). On error nothing is left on the token.
func (r *Registry) newVersion(ctx context.Context, k *Key, kind hsm.Kind) (hsm.Key, error) {
	next := uint32(len(k.Versions)) + 1
	hk, attrs, err := r.m.CreateKey(ctx, kind, hsmLabel(k.ID, next))
	if err != nil {
		return hsm.Key{}, err
	}
	_, err = k.AddVersion(hk.ID, hk.Label, Attrs{
		NeverExtractable: attrs.NeverExtractable, AlwaysSensitive: attrs.AlwaysSensitive,
		Local: attrs.Local, Extractable: attrs.Extractable, Sensitive: attrs.Sensitive,
		Token: &attrs.Token, Private: &attrs.Private, Modifiable: &attrs.Modifiable,
	}, r.opts.Now())
	if err != nil {
		_ = r.m.Destroy(context.WithoutCancel(ctx), hk)
		return hsm.Key{}, err
	}
	return hk, nil
}

func (r *Registry) install(e *Entry) {
	r.mu.Lock()
	r.entries[e.Key.Name] = e
	r.mu.Unlock()
}

// change applies fn to a clone of the named key, stores it with
// compare-and-swap and installs it. extra, if set, is an HSM object that fn
// added (a rotation's new version).
func (r *Registry) change(ctx context.Context, name string, fn func(k *Key) (extra *hsm.Key, err error)) (*Key, error) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	cur, err := r.Get(name)
	if err != nil {
		return nil, err
	}
	kv, err := r.st.Get(ctx, storePrefix+name)
	if err != nil {
		return nil, fmt.Errorf("read key %q: %w", name, err)
	}
	k := cur.Key.Clone()
	extra, err := fn(k)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(k)
	if err != nil {
		return nil, err
	}
	if err := r.st.Txn(ctx, []store.Cond{store.RevisionIs(kv.Key, kv.Revision)}, []store.Op{store.PutOp(kv.Key, b)}); err != nil {
		if extra != nil {
			_ = r.m.Destroy(context.WithoutCancel(ctx), *extra)
		}
		return nil, fmt.Errorf("store key %q: %w", name, err)
	}
	e := &Entry{Key: k, hsm: make(map[uint32]hsm.Key, len(cur.hsm)+1)}
	for n, hk := range cur.hsm {
		if v, ok := k.Version(n); ok && v.State != StateDestroyed {
			e.hsm[n] = hk
		}
	}
	if extra != nil {
		e.hsm[k.Primary] = *extra
	}
	r.install(e)
	return k, nil
}

// Rotate adds a new version, generated in the HSM, and makes it primary.
func (r *Registry) Rotate(ctx context.Context, name string) (*Key, error) {
	return r.change(ctx, name, func(k *Key) (*hsm.Key, error) {
		kind, _ := KindOf(k.Purpose)
		hk, err := r.newVersion(ctx, k, kind)
		if err != nil {
			return nil, err
		}
		return &hk, nil
	})
}

// Enable enables version n.
func (r *Registry) Enable(ctx context.Context, name string, n uint32) (*Key, error) {
	return r.change(ctx, name, func(k *Key) (*hsm.Key, error) { return nil, k.Enable(n) })
}

// Disable disables version n (not the primary).
func (r *Registry) Disable(ctx context.Context, name string, n uint32) (*Key, error) {
	return r.change(ctx, name, func(k *Key) (*hsm.Key, error) { return nil, k.Disable(n) })
}

// SetMinDecrypt sets the minimum version accepted for decryption.
func (r *Registry) SetMinDecrypt(ctx context.Context, name string, n uint32) (*Key, error) {
	return r.change(ctx, name, func(k *Key) (*hsm.Key, error) { return nil, k.SetMinDecrypt(n) })
}

// ScheduleDestroy schedules version n's destruction after wait (0 = the
// window's default, which the caller passes as Min when unset).
func (r *Registry) ScheduleDestroy(ctx context.Context, name string, n uint32, wait time.Duration) (*Key, error) {
	return r.change(ctx, name, func(k *Key) (*hsm.Key, error) {
		return nil, k.ScheduleDestroy(n, r.opts.Now(), wait, r.opts.Destroy)
	})
}

// CancelDestroy cancels a scheduled destruction; the version stays disabled.
func (r *Registry) CancelDestroy(ctx context.Context, name string, n uint32) (*Key, error) {
	return r.change(ctx, name, func(k *Key) (*hsm.Key, error) { return nil, k.CancelDestroy(n) })
}

// DestroyDue deletes the HSM objects of every version whose waiting period
// has passed (crypto-shredding) and records them as destroyed. It returns
// how many versions it destroyed.
func (r *Registry) DestroyDue(ctx context.Context) (int, error) {
	now := r.opts.Now()
	r.mu.RLock()
	due := map[string][]uint32{}
	for name, e := range r.entries {
		if vs := e.Key.DueForDestruction(now); len(vs) > 0 {
			due[name] = vs
		}
	}
	r.mu.RUnlock()
	n := 0
	var errs []error
	for name, vs := range due {
		for _, v := range vs {
			_, err := r.change(ctx, name, func(k *Key) (*hsm.Key, error) {
				ver, ok := k.Version(v)
				if !ok {
					return nil, ErrVersionNotFound
				}
				kind, _ := KindOf(k.Purpose)
				if err := r.m.Destroy(ctx, hsm.Key{ID: ver.HSMID, Label: ver.HSMLabel, Kind: kind}); err != nil {
					return nil, err
				}
				return nil, k.MarkDestroyed(v, now)
			})
			if err != nil {
				errs = append(errs, fmt.Errorf("destroy %s version %d: %w", name, v, err))
				continue
			}
			r.opts.Logger.Info("key version destroyed (hsm object deleted)", "key", name, "version", v)
			n++
		}
	}
	return n, errors.Join(errs...)
}

func purposeList() []string {
	var out []string
	for p := PurposeEncryptAES256GCM; p.Valid(); p++ {
		out = append(out, p.String())
	}
	return out
}
