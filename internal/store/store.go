// Package store is Custody's metadata store: an ordered key-value space with
// compare-and-swap transactions and prefix watches.
//
// The interface is shaped after etcd v3 (keys ordered bytewise, a store-wide
// revision that advances once per committed write transaction, per-key
// modification revisions, all-or-nothing conditional transactions, watches
// delivered in commit order) so that the embedded bbolt backend in this
// package and a later etcd backend serve the same callers unchanged. The
// limits (MaxKeySize, MaxValueSize, MaxTxnOps) are ones both backends meet.
//
// Invariants:
//
//   - Key material never enters the store. It holds names, versions, HSM object
//     ids, states, policies, proposals, budgets and audit cursors; never a key,
//     a PIN, or plaintext. Values are not secret but their integrity matters:
//     wrap a Store with Authenticated to have every value sealed and bound to
//     its key name.
//   - A Txn either applies all of its ops at one new revision, or changes
//     nothing and reports why (ErrConflict when a condition did not hold).
package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Limits shared by every backend (etcd's defaults are the tighter ones).
const (
	// MaxKeySize is the longest key accepted, in bytes.
	MaxKeySize = 1024
	// MaxValueSize is the largest value accepted, in bytes (etcd's default
	// request limit is 1.5 MiB, which must also carry the key and framing).
	MaxValueSize = 1 << 20
	// MaxTxnOps is the most conditions, and separately the most ops, one Txn
	// may carry: etcd's default --max-txn-ops (128) less the vault revision
	// write the etcd backend adds to every transaction.
	MaxTxnOps = 127
)

// Sentinel errors. Backends wrap them with %w and context; match with errors.Is.
var (
	// ErrNotFound means the key does not exist.
	ErrNotFound = errors.New("store: key not found")
	// ErrExists means Create found the key already present.
	ErrExists = errors.New("store: key already exists")
	// ErrConflict means a Txn condition did not hold; nothing was changed.
	ErrConflict = errors.New("store: transaction condition failed")
	// ErrClosed means the store has been closed.
	ErrClosed = errors.New("store: closed")
	// ErrInvalid means the request was malformed (empty or oversized key,
	// oversized value, too many ops, one key written twice in a Txn, ...).
	ErrInvalid = errors.New("store: invalid request")
	// ErrTampered means a value failed authentication (see Authenticated).
	ErrTampered = errors.New("store: value failed authentication")
	// ErrUnavailable means the store cannot answer right now: the backend
	// could not be reached or did not answer in time (etcd without quorum,
	// network down), or a value could not be sealed or verified (the HSM is
	// unreachable). Nothing is known about the value and it is never
	// reported as tampering; callers fail closed and may retry. For a Txn
	// the outcome may be unknown: the write may or may not have applied.
	ErrUnavailable = errors.New("store: unavailable")
	// ErrWatchLagged is carried by the final event of a watch whose reader
	// fell so far behind that its buffer filled. The watcher must re-read
	// (List) and watch again.
	ErrWatchLagged = errors.New("store: watcher fell behind")
	// ErrLocked means another process holds the store file.
	ErrLocked = errors.New("store: file is locked by another process")
	// ErrCorrupt means stored data is not in the expected format.
	ErrCorrupt = errors.New("store: corrupt data")
	// ErrInsecureFile means the store file is accessible to group or others.
	ErrInsecureFile = errors.New("store: file permissions too open")
)

// KV is one key and its value at the revision that last modified it.
type KV struct {
	Key   string
	Value []byte
	// Revision is the store revision of the transaction that last put this
	// key (etcd's mod_revision). It is never 0 for an existing key.
	Revision int64
}

// Store is an ordered key-value store with conditional transactions and
// watches. Implementations are safe for concurrent use. Returned slices are
// owned by the caller; values passed in may be reused after a call returns.
type Store interface {
	// Get returns the key's current value, or ErrNotFound.
	Get(ctx context.Context, key string) (KV, error)
	// List returns keys that start with prefix and sort strictly after
	// startAfter (use "" to start at the beginning of the prefix), in
	// ascending bytewise order, at most limit of them (limit <= 0: all).
	// To page, pass the last key of one page as startAfter of the next.
	List(ctx context.Context, prefix, startAfter string, limit int) ([]KV, error)
	// Txn applies all ops atomically at one new revision if every condition
	// holds; otherwise it returns an error wrapping ErrConflict and changes
	// nothing. A Txn whose ops change nothing (no ops, or deletes of absent
	// keys only) does not advance the revision.
	Txn(ctx context.Context, conds []Cond, ops []Op) error
	// Watch returns a channel of events for keys starting with prefix, from
	// transactions committed after Watch returns, in commit order. The channel
	// is closed when ctx ends (no error event), or after a final event whose
	// Err is set (ErrWatchLagged, ErrClosed, ErrTampered). Writers are never
	// blocked by a slow watcher.
	//
	// To follow a prefix without gaps: Watch first, then List, then apply
	// events whose Revision is greater than the listed key's Revision.
	Watch(ctx context.Context, prefix string) (<-chan Event, error)
	// Revision returns the store-wide revision: 0 for an empty new store,
	// advanced by one per committed transaction that changed something.
	Revision(ctx context.Context) (int64, error)
	// Close releases the store. Open watches end with ErrClosed; later calls
	// return ErrClosed. Closing twice is harmless.
	Close() error
}

// CondType selects what a Cond checks.
type CondType uint8

// Condition types.
const (
	// CondMissing holds when the key does not exist.
	CondMissing CondType = iota + 1
	// CondExists holds when the key exists.
	CondExists
	// CondRevision holds when the key's Revision equals Cond.Revision; a
	// Revision of 0 holds exactly when the key does not exist (as in etcd).
	CondRevision
	// CondValue holds when the key exists and its value equals Cond.Value.
	CondValue
)

// Cond is one precondition of a Txn. Build it with Missing, Exists,
// RevisionIs or ValueIs.
type Cond struct {
	Type     CondType
	Key      string
	Revision int64
	Value    []byte
}

// Missing is a condition that key does not exist.
func Missing(key string) Cond { return Cond{Type: CondMissing, Key: key} }

// Exists is a condition that key exists.
func Exists(key string) Cond { return Cond{Type: CondExists, Key: key} }

// RevisionIs is a condition that key was last modified at rev (0: absent).
func RevisionIs(key string, rev int64) Cond {
	return Cond{Type: CondRevision, Key: key, Revision: rev}
}

// ValueIs is a condition that key exists with exactly this value.
func ValueIs(key string, value []byte) Cond {
	return Cond{Type: CondValue, Key: key, Value: value}
}

// OpType is the kind of an Op, and of an Event.
type OpType uint8

// Op and event types.
const (
	// OpPut sets a key's value.
	OpPut OpType = iota + 1
	// OpDelete removes a key; deleting an absent key is a no-op.
	OpDelete
)

func (t OpType) String() string {
	switch t {
	case OpPut:
		return "put"
	case OpDelete:
		return "delete"
	}
	return fmt.Sprintf("OpType(%d)", uint8(t))
}

// Op is one write of a Txn. Build it with PutOp or DeleteOp.
type Op struct {
	Type  OpType
	Key   string
	Value []byte
}

// PutOp sets key to value.
func PutOp(key string, value []byte) Op { return Op{Type: OpPut, Key: key, Value: value} }

// DeleteOp removes key.
func DeleteOp(key string) Op { return Op{Type: OpDelete, Key: key} }

// Event is one change seen by a watch, or the watch's final error.
type Event struct {
	// Type is OpPut or OpDelete; zero on an error event.
	Type OpType
	// KV is the key after the change. For a delete, Value is nil and
	// Revision is the revision of the deleting transaction.
	KV KV
	// Err is set only on the last event before the channel closes, and says
	// why the watch ended.
	Err error
}

// checkKey reports whether key is acceptable to every backend.
func checkKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty key", ErrInvalid)
	case len(key) > MaxKeySize:
		return fmt.Errorf("%w: key is %d bytes, limit %d", ErrInvalid, len(key), MaxKeySize)
	}
	return nil
}

// checkTxn validates a transaction against the limits every backend shares.
// Backends call it before doing any work so that bad input changes nothing.
func checkTxn(conds []Cond, ops []Op) error {
	if len(conds) > MaxTxnOps || len(ops) > MaxTxnOps {
		return fmt.Errorf("%w: %d conditions and %d ops, limit %d each", ErrInvalid, len(conds), len(ops), MaxTxnOps)
	}
	for i, c := range conds {
		if err := checkKey(c.Key); err != nil {
			return fmt.Errorf("condition %d: %w", i, err)
		}
		switch c.Type {
		case CondMissing, CondExists, CondValue:
		case CondRevision:
			if c.Revision < 0 {
				return fmt.Errorf("%w: condition %d: negative revision", ErrInvalid, i)
			}
		default:
			return fmt.Errorf("%w: condition %d: unknown type %d", ErrInvalid, i, c.Type)
		}
	}
	seen := make(map[string]struct{}, len(ops))
	for i, op := range ops {
		if err := checkKey(op.Key); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		switch op.Type {
		case OpPut:
			if len(op.Value) > MaxValueSize {
				return fmt.Errorf("%w: op %d: value is %d bytes, limit %d", ErrInvalid, i, len(op.Value), MaxValueSize)
			}
		case OpDelete:
		default:
			return fmt.Errorf("%w: op %d: unknown type %d", ErrInvalid, i, op.Type)
		}
		// etcd refuses a txn that writes one key twice; so do we.
		if _, dup := seen[op.Key]; dup {
			return fmt.Errorf("%w: op %d: key %q written twice in one transaction", ErrInvalid, i, op.Key)
		}
		seen[op.Key] = struct{}{}
	}
	return nil
}

// condHolds evaluates c against the key's current state (exists, value, rev).
func condHolds(c Cond, exists bool, value []byte, rev int64) bool {
	switch c.Type {
	case CondMissing:
		return !exists
	case CondExists:
		return exists
	case CondRevision:
		if c.Revision == 0 {
			return !exists
		}
		return exists && rev == c.Revision
	case CondValue:
		return exists && bytes.Equal(value, c.Value)
	}
	return false
}

// Put sets key to value unconditionally.
func Put(ctx context.Context, s Store, key string, value []byte) error {
	return s.Txn(ctx, nil, []Op{PutOp(key, value)})
}

// Create sets key to value only if key does not exist; otherwise it returns
// an error wrapping ErrExists and changes nothing.
func Create(ctx context.Context, s Store, key string, value []byte) error {
	err := s.Txn(ctx, []Cond{Missing(key)}, []Op{PutOp(key, value)})
	if errors.Is(err, ErrConflict) {
		return fmt.Errorf("%w: %q", ErrExists, key)
	}
	return err
}

// Delete removes key unconditionally; deleting an absent key is not an error.
func Delete(ctx context.Context, s Store, key string) error {
	return s.Txn(ctx, nil, []Op{DeleteOp(key)})
}

// UpdateAttempts bounds how many times Update retries after losing a race.
// It is high on purpose: under contention on a busy machine an updater can
// lose many races in a row, and giving up loses an update; the caller's
// context is the real bound (backoff is at most 20 ms an attempt).
const UpdateAttempts = 1000

// Update reads key, computes its new value with fn and writes it only if the
// key was not modified in between, retrying with jittered backoff up to
// UpdateAttempts times. fn receives nil when the key is absent (so an empty
// value and an absent key look alike to fn); it may run several times and must
// not have side effects. An error from fn aborts the update and is returned
// unchanged. When every attempt loses a race the error wraps ErrConflict.
func Update(ctx context.Context, s Store, key string, fn func(old []byte) ([]byte, error)) error {
	if u, ok := s.(updater); ok {
		return u.update(ctx, key, fn)
	}
	return updateLoop(ctx, s, key, fn)
}

// updateLoop is Update by Get and conditional Txn, retried on lost races.
func updateLoop(ctx context.Context, s Store, key string, fn func(old []byte) ([]byte, error)) error {
	for attempt := range UpdateAttempts {
		var old []byte
		var rev int64
		kv, err := s.Get(ctx, key)
		switch {
		case err == nil:
			old, rev = kv.Value, kv.Revision
		case errors.Is(err, ErrNotFound):
		default:
			return err
		}
		value, err := fn(old)
		if err != nil {
			return err
		}
		err = s.Txn(ctx, []Cond{RevisionIs(key, rev)}, []Op{PutOp(key, value)})
		if !errors.Is(err, ErrConflict) {
			return err
		}
		if err := backoff(ctx, attempt); err != nil {
			return err
		}
	}
	return fmt.Errorf("store: update %q: lost %d races: %w", key, UpdateAttempts, ErrConflict)
}

// RevTxner is implemented by stores and leaderships whose transactions can
// report the revision they committed at (every backend in this package,
// Authenticated, and their leaderships).
type RevTxner interface {
	// TxnRev is Txn, and also returns the revision the transaction
	// committed at: the Revision its puts carry. It returns 0 when the
	// transaction changed nothing.
	TxnRev(ctx context.Context, conds []Cond, ops []Op) (int64, error)
}

// TxnRev runs t's transaction and returns the revision it committed at. t
// must implement RevTxner (every Store and Leadership of this package does);
// anything else is refused with ErrInvalid, changing nothing.
func TxnRev(ctx context.Context, t any, conds []Cond, ops []Op) (int64, error) {
	r, ok := t.(RevTxner)
	if !ok {
		return 0, fmt.Errorf("%w: %T cannot report the revision it commits at", ErrInvalid, t)
	}
	return r.TxnRev(ctx, conds, ops)
}

// revTxn is t's TxnRev, or its Txn reporting revision 0.
func revTxn(t interface {
	Txn(context.Context, []Cond, []Op) error
}) func(context.Context, []Cond, []Op) (int64, error) {
	if r, ok := t.(RevTxner); ok {
		return r.TxnRev
	}
	return func(ctx context.Context, conds []Cond, ops []Op) (int64, error) { return 0, t.Txn(ctx, conds, ops) }
}

// IsShared reports whether s is a store several custodyd replicas may write
// at once (see Shared), looking through Authenticated.
func IsShared(s Store) bool {
	if a, ok := s.(*AuthStore); ok {
		return a.shared
	}
	_, ok := s.(Shared)
	return ok
}

// Shared is implemented by backends that several custodyd replicas may
// use at once (etcd). Identity names the shared store, so that replicas
// can tell each other from an instance on another store.
type Shared interface {
	Shared(ctx context.Context) (string, error)
}

// updater is implemented by backends (and wrappers) that run Update's
// read-modify-write themselves, e.g. serialised with their other writers.
// The contract is Update's.
type updater interface {
	update(ctx context.Context, key string, fn func(old []byte) ([]byte, error)) error
}

// backoff sleeps a random time below an exponentially growing bound (100µs
// doubling to 20ms), so that contending updaters spread out.
func backoff(ctx context.Context, attempt int) error {
	limit := 100 * time.Microsecond << min(attempt, 8)
	limit = min(limit, 20*time.Millisecond)
	t := time.NewTimer(rand.N(limit) + 1)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
