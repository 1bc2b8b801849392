package keys

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

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

// Object names one key version's object on the token: what the token needs
// to find it again.
type Object struct {
	ID      []byte  // CKA_ID
	Label   string  // CKA_LABEL
	Purpose Purpose // which kind of key it is
}

// Token is the HSM as the registry uses it: four calls. The production
// implementation is package hsmtoken over package hsm; the registry's own
// logic tests run against an in-memory token, without cgo.
type Token interface {
	// Create generates a key for purpose under label inside the token and
	// returns its CKA_ID and the custody attributes read back from it.
	Create(ctx context.Context, p Purpose, label string) (id []byte, a Attrs, err error)
	// Find locates an object; ErrObjectMissing when the token has none.
	Find(ctx context.Context, o Object) error
	// Destroy deletes an object; it succeeds if the object is gone.
	Destroy(ctx context.Context, o Object) error
	// Index scans the token once, so that many Finds that follow are cheap.
	Index(ctx context.Context) error
}

// ErrObjectMissing is what a Token's Find returns for an object it lacks.
var ErrObjectMissing = errors.New("object not on the token")

// Entry is an immutable snapshot of one key and the token objects of its
// live versions. A new Entry replaces the old one on every change, so
// readers on the hot path take it under a read lock and never see a
// half-made change.
type Entry struct {
	Key     *Key
	objects map[uint32]Object
}

// Object returns the token object of version n, or ErrKeyMaterialMissing.
func (e *Entry) Object(n uint32) (Object, error) {
	o, ok := e.objects[n]
	if !ok {
		return Object{}, fmt.Errorf("%w: %s version %d", ErrKeyMaterialMissing, e.Key.Name, n)
	}
	return o, nil
}

// RegistryOptions tunes a Registry.
type RegistryOptions struct {
	Now     func() time.Time // default time.Now
	Destroy DestroyWindow    // bounds on destruction waits
	Logger  *slog.Logger
	// Record, when set, puts every scheduled destruction on the record:
	// it is called with an intent before a version's HSM object is
	// deleted, and an error from it stops the deletion (nothing is
	// destroyed off the record); then with the outcome.
	Record func(ctx context.Context, ev DestroyEvent) error
}

// DestroyEvent is one scheduled destruction of a key version, for the
// record.
type DestroyEvent struct {
	Key     string
	Version uint32
	Intent  bool  // before the HSM object is deleted
	Err     error // the outcome (nil: destroyed); unset for an intent
	// ObjectDeleted, with Err set: the HSM object is gone, but recording
	// the version destroyed in the store failed (the next run does it).
	ObjectDeleted bool
}

// Registry holds Custody's named, versioned keys: metadata in the store (never
// key material), objects in the HSM. It is safe for concurrent use. Writes go
// to the store with compare-and-swap before the in-memory view changes.
type Registry struct {
	st   store.Store
	m    Token
	opts RegistryOptions

	mu      sync.RWMutex
	entries map[string]*Entry
	revs    map[string]int64 // store revision each entry was built from
	writeMu sync.Mutex       // serialises changes made by this process
}

// Committer commits a store transaction: the store itself, or a
// store.Leadership whose writes are fenced. It must implement
// store.RevTxner (every Store and Leadership of package store does).
type Committer interface {
	Txn(ctx context.Context, conds []store.Cond, ops []store.Op) error
}

// OpenRegistry loads every key from the store and finds the HSM object of
// each live version, caching its handle so no request searches the token.
// A version whose object is missing is reported and fails closed; it does
// not stop the other keys from loading.
func OpenRegistry(ctx context.Context, st store.Store, m Token, opts RegistryOptions) (*Registry, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	r := &Registry{st: st, m: m, opts: opts, entries: map[string]*Entry{}, revs: map[string]int64{}}
	kvs, err := st.List(ctx, storePrefix, "", 0)
	if err != nil {
		return nil, fmt.Errorf("load keys: %w", err)
	}
	if len(kvs) > 0 {
		// One scan of the token instead of a search per key version.
		if err := m.Index(ctx); err != nil {
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
		e, err := r.entryFor(ctx, &k, nil)
		if err != nil {
			return nil, err
		}
		r.entries[k.Name] = e
		r.revs[k.Name] = kv.Revision
	}
	return r, nil
}

// entryFor builds an Entry, finding the token object of every live version
// (those prev already found are taken from prev).
func (r *Registry) entryFor(ctx context.Context, k *Key, prev *Entry) (*Entry, error) {
	if !k.Purpose.Valid() {
		return nil, fmt.Errorf("key %q: %w: purpose %v", k.Name, ErrInvalidArgument, k.Purpose)
	}
	e := &Entry{Key: k, objects: make(map[uint32]Object, len(k.Versions))}
	for _, v := range k.Versions {
		if v.State == StateDestroyed {
			continue
		}
		o := v.object(k.Purpose)
		if prev != nil {
			if po, ok := prev.objects[v.Number]; ok && string(po.ID) == string(o.ID) && po.Label == o.Label {
				e.objects[v.Number] = po
				continue
			}
		}
		if err := r.m.Find(ctx, o); err != nil {
			if errors.Is(err, ErrObjectMissing) {
				r.opts.Logger.Error("key version's hsm object is missing; it will fail closed",
					"key", k.Name, "version", v.Number, "hsm_id", hex.EncodeToString(v.HSMID))
				continue
			}
			return nil, fmt.Errorf("key %q version %d: %w", k.Name, v.Number, err)
		}
		e.objects[v.Number] = o
	}
	return e, nil
}

// object is the token object of version v of a key of purpose p.
func (v Version) object(p Purpose) Object { return Object{ID: v.HSMID, Label: v.HSMLabel, Purpose: p} }

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
	if !p.Valid() {
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
	o, err := r.newVersion(ctx, k)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(k)
	if err != nil {
		return nil, err
	}
	rev, err := store.TxnRev(ctx, r.st, []store.Cond{store.Missing(storePrefix + name)}, []store.Op{store.PutOp(storePrefix+name, b)})
	if err != nil {
		_ = r.m.Destroy(context.WithoutCancel(ctx), o)
		if errors.Is(err, store.ErrConflict) {
			return nil, fmt.Errorf("%w: %q", ErrKeyExists, name)
		}
		return nil, fmt.Errorf("store key %q: %w", name, err)
	}
	r.install(&Entry{Key: k, objects: map[uint32]Object{k.Primary: o}}, rev)
	return k, nil
}

// newVersion generates the next version's token object and adds it to k
// (which the caller owns). On error nothing is left on the token.
func (r *Registry) newVersion(ctx context.Context, k *Key) (Object, error) {
	next := uint32(len(k.Versions)) + 1
	label := hsmLabel(k.ID, next)
	id, attrs, err := r.m.Create(ctx, k.Purpose, label)
	if err != nil {
		return Object{}, err
	}
	o := Object{ID: id, Label: label, Purpose: k.Purpose}
	if _, err = k.AddVersion(id, label, attrs, r.opts.Now()); err != nil {
		_ = r.m.Destroy(context.WithoutCancel(ctx), o)
		return Object{}, err
	}
	return o, nil
}

// install makes e the key's entry if it was built from a store revision
// newer than the one in force (a replica's watch and its own writes may
// deliver one change twice, in either order).
func (r *Registry) install(e *Entry, rev int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rev != 0 && rev < r.revs[e.Key.Name] {
		return
	}
	r.entries[e.Key.Name] = e
	r.revs[e.Key.Name] = rev
}

// change applies fn to the named key as stored now, stores it with
// compare-and-swap and installs it. extra, if set, is a token object that fn
// added (a rotation's new version).
func (r *Registry) change(ctx context.Context, name string, fn func(k *Key) (extra *Object, err error)) (*Key, error) {
	return r.changeVia(ctx, r.st, name, fn)
}

// changeVia is change, committed through c.
func (r *Registry) changeVia(ctx context.Context, c Committer, name string, fn func(k *Key) (extra *Object, err error)) (*Key, error) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	cur, err := r.Get(name)
	if err != nil {
		return nil, err
	}
	kv, err := r.st.Get(ctx, storePrefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %q", ErrKeyNotFound, name)
	}
	if err != nil {
		return nil, fmt.Errorf("read key %q: %w", name, err)
	}
	// The stored record, not this process's copy: another replica may have
	// changed the key since.
	var k Key
	if err := json.Unmarshal(kv.Value, &k); err != nil {
		return nil, fmt.Errorf("load key %q: %w", name, err)
	}
	if err := k.Validate(); err != nil {
		return nil, fmt.Errorf("load key %q: %w", name, err)
	}
	extra, err := fn(&k)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(&k)
	if err != nil {
		return nil, err
	}
	rev, err := store.TxnRev(ctx, c, []store.Cond{store.RevisionIs(kv.Key, kv.Revision)}, []store.Op{store.PutOp(kv.Key, b)})
	if err != nil {
		if extra != nil {
			_ = r.m.Destroy(context.WithoutCancel(ctx), *extra)
		}
		return nil, fmt.Errorf("store key %q: %w", name, err)
	}
	prev := cur
	if extra != nil {
		prev = &Entry{Key: cur.Key, objects: maps.Clone(cur.objects)}
		prev.objects[k.Primary] = *extra
	}
	e, err := r.entryFor(ctx, &k, prev)
	if err != nil {
		return nil, err
	}
	r.install(e, rev)
	return &k, nil
}

// Rotate adds a new version, generated in the HSM, and makes it primary.
func (r *Registry) Rotate(ctx context.Context, name string) (*Key, error) {
	return r.change(ctx, name, func(k *Key) (*Object, error) {
		o, err := r.newVersion(ctx, k)
		if err != nil {
			return nil, err
		}
		return &o, nil
	})
}

// Enable enables version n.
func (r *Registry) Enable(ctx context.Context, name string, n uint32) (*Key, error) {
	return r.change(ctx, name, func(k *Key) (*Object, error) { return nil, k.Enable(n) })
}

// Disable disables version n (not the primary).
func (r *Registry) Disable(ctx context.Context, name string, n uint32) (*Key, error) {
	return r.change(ctx, name, func(k *Key) (*Object, error) { return nil, k.Disable(n) })
}

// SetMinDecrypt sets the minimum version accepted for decryption.
func (r *Registry) SetMinDecrypt(ctx context.Context, name string, n uint32) (*Key, error) {
	return r.change(ctx, name, func(k *Key) (*Object, error) { return nil, k.SetMinDecrypt(n) })
}

// ScheduleDestroy schedules version n's destruction after wait (0 = the
// window's default, which the caller passes as Min when unset).
func (r *Registry) ScheduleDestroy(ctx context.Context, name string, n uint32, wait time.Duration) (*Key, error) {
	return r.change(ctx, name, func(k *Key) (*Object, error) {
		return nil, k.ScheduleDestroy(n, r.opts.Now(), wait, r.opts.Destroy)
	})
}

// CancelDestroy cancels a scheduled destruction; the version stays disabled.
func (r *Registry) CancelDestroy(ctx context.Context, name string, n uint32) (*Key, error) {
	return r.change(ctx, name, func(k *Key) (*Object, error) { return nil, k.CancelDestroy(n) })
}

// Discard deletes a key at once: its HSM objects and its record. It exists
// for one caller, the key ceremony rolling back keys an unfinished ceremony
// created, which were never granted to anyone; everything else destroys keys
// by schedule (ScheduleDestroy, DestroyDue).
func (r *Registry) Discard(ctx context.Context, name string) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	e, err := r.Get(name)
	if err != nil {
		return err
	}
	for _, o := range e.objects {
		if err := r.m.Destroy(ctx, o); err != nil {
			return fmt.Errorf("discard %q: %w", name, err)
		}
	}
	rev, err := store.TxnRev(ctx, r.st, nil, []store.Op{store.DeleteOp(storePrefix + name)})
	if err != nil {
		return fmt.Errorf("discard %q: %w", name, err)
	}
	r.remove(name, rev)
	return nil
}

// remove forgets a key deleted from the store at rev.
func (r *Registry) remove(name string, rev int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rev != 0 && rev < r.revs[name] {
		return
	}
	delete(r.entries, name)
	r.revs[name] = rev
}

// DestroyDue deletes the HSM objects of every version whose waiting period
// has passed (crypto-shredding) and records them as destroyed. It returns
// how many versions it destroyed.
func (r *Registry) DestroyDue(ctx context.Context) (int, error) { return r.DestroyDueVia(ctx, r.st) }

// DestroyDueVia is DestroyDue with its records committed through c: in a
// cluster, the leadership of the replica that runs scheduled work, so that
// a deposed leader records nothing. Each version is recorded destroyed by
// a compare-and-swap on its key's record, so it is recorded once; deleting
// an object that is already gone succeeds, so the HSM side is idempotent.
func (r *Registry) DestroyDueVia(ctx context.Context, c Committer) (int, error) {
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
			if l, ok := c.(interface{ Done() <-chan struct{} }); ok {
				select {
				case <-l.Done():
					return n, errors.Join(append(errs, store.ErrNotLeader)...)
				default:
				}
			}
			deleted := false
			_, err := r.changeVia(ctx, c, name, func(k *Key) (*Object, error) {
				ver, ok := k.Version(v)
				if !ok {
					return nil, ErrVersionNotFound
				}
				if ver.State == StateDestroyed {
					return nil, errAlreadyDestroyed
				}
				if r.opts.Record != nil {
					if err := r.opts.Record(ctx, DestroyEvent{Key: name, Version: v, Intent: true}); err != nil {
						return nil, fmt.Errorf("recording the intent: %w", err)
					}
				}
				if err := r.m.Destroy(ctx, ver.object(k.Purpose)); err != nil {
					return nil, err
				}
				deleted = true
				return nil, k.MarkDestroyed(v, now)
			})
			if errors.Is(err, errAlreadyDestroyed) {
				continue // another replica did it
			}
			if r.opts.Record != nil {
				if rerr := r.opts.Record(ctx, DestroyEvent{Key: name, Version: v, Err: err, ObjectDeleted: deleted && err != nil}); rerr != nil && err == nil {
					err = fmt.Errorf("destroyed, but recording it failed: %w", rerr)
				}
			}
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

var errAlreadyDestroyed = errors.New("version already destroyed")

func purposeList() []string {
	var out []string
	for p := PurposeEncryptAES256GCM; p.Valid(); p++ {
		out = append(out, p.String())
	}
	return out
}
