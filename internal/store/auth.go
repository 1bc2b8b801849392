package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Sealer authenticates stored values with a key that never leaves the HSM.
// Seal must bind the key name into its output so that a value moved to
// another key fails Open, and must return the payload unchanged followed by
// its tag (the store reads a record's write revision from the front).
type Sealer interface {
	// Seal returns the stored form of payload under key: payload || tag.
	Seal(ctx context.Context, key string, payload []byte) ([]byte, error)
	// Open verifies sealed under key and returns the payload. A seal that
	// does not verify is an error wrapping ErrTampered; any other error
	// (the HSM unreachable, a timeout) means the seal could not be checked,
	// and is reported as ErrUnavailable, never as tampering.
	Open(ctx context.Context, key string, sealed []byte) ([]byte, error)
}

// AnchorKey holds the store's anchor: its revision and the digest of every
// anchored record's revision.
const AnchorKey = "meta/anchor"

// sealMagic starts every payload this version seals: magic, write revision
// (8 bytes, big-endian), value.
var sealMagic = []byte{0xC2, 0x01}

const sealHeader = 2 + 8

// Anchor is what the store's authenticated state amounts to: a revision that
// advances with every write of an anchored record, and a digest over the
// name and write revision of every anchored record. Because each value's
// seal binds its write revision, a record copied in from an older copy of
// the store no longer matches the digest, and an older copy of the whole
// store has an older revision. Audit checkpoints record the revision, so a
// store older than the newest checkpoint is detected at start.
type Anchor struct {
	Revision uint64
	Digest   [32]byte
}

// AuthOptions tune an authenticated store.
type AuthOptions struct {
	// Unanchored reports keys kept out of the anchor (their values are still
	// sealed and bound to their write revision). Stored data keys are: they
	// are many, written by relays, and guarded by the audit log instead.
	Unanchored func(key string) bool
}

// AuthStore seals every value on the way in and opens it on the way out,
// and keeps the anchor. It implements Store.
type AuthStore struct {
	inner  Store
	sealer Sealer
	opts   AuthOptions

	mu      sync.Mutex // serialises anchored writes; guards below
	anchor  Anchor
	buckets [256]map[string]uint64 // anchored key -> write revision, by first byte of SHA-256(key)
	sums    [256][32]byte
}

// ErrRolledBack reports a store whose anchored records do not match its
// anchor: a record was deleted, or copied in from an older copy.
var ErrRolledBack = errors.New("store: records do not match the store's anchor (rolled back or deleted outside custodyd)")

// Authenticated opens s with every value sealed by sealer, bound to its key
// name and write revision, and verified on every read, list and watch event
// (a value that fails is ErrTampered). It checks the anchored records
// against the anchor (ErrRolledBack); a store written before anchors
// existed is re-sealed once. It detects edits of the backing file or
// cluster, values moved between keys, and anchored records deleted or
// rolled back one by one; a whole store rolled back is detected by comparing
// Anchor().Revision with the newest audit checkpoint.
//
// Writes of anchored records are serialised by this process: a store must
// have one AuthStore writing it (bbolt's file lock ensures one process).
// ValueIs conditions compare plaintext: Txn reads and verifies the current
// value and turns the condition into a revision check, so it stays atomic.
// The seal's overhead counts against MaxValueSize.
func Authenticated(ctx context.Context, s Store, sealer Sealer, o AuthOptions) (*AuthStore, error) {
	if o.Unanchored == nil {
		o.Unanchored = func(string) bool { return false }
	}
	a := &AuthStore{inner: s, sealer: sealer, opts: o}
	empty := bucketSum(nil)
	for i := range a.buckets {
		a.buckets[i] = map[string]uint64{}
		a.sums[i] = empty
	}
	if err := a.load(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

func bucketOf(key string) int {
	h := sha256.Sum256([]byte(key))
	return int(h[0])
}

func (a *AuthStore) anchored(key string) bool { return key != AnchorKey && !a.opts.Unanchored(key) }

// load reads the anchor and every anchored record's write revision (from
// the sealed bytes; each value is verified when it is read), and compares.
func (a *AuthStore) load(ctx context.Context) error {
	kvs, err := a.inner.List(ctx, "", "", 0)
	if err != nil {
		return err
	}
	var anchorKV *KV
	legacy := false
	for i := range kvs {
		kv := kvs[i]
		if kv.Key == AnchorKey {
			anchorKV = &kvs[i]
			continue
		}
		if !a.anchored(kv.Key) {
			continue
		}
		rev, ok := sealedRevision(kv.Value)
		if !ok {
			// No write revision: a record from before the anchor, if its
			// seal verifies; anything else was edited outside custodyd.
			if _, err := a.sealer.Open(ctx, kv.Key, kv.Value); err != nil {
				return a.openError(kv, err)
			}
			legacy = true
			continue
		}
		a.buckets[bucketOf(kv.Key)][kv.Key] = rev
	}
	if anchorKV == nil {
		if !legacy && len(a.allAnchored()) > 0 {
			return fmt.Errorf("%w: %s is missing", ErrRolledBack, AnchorKey)
		}
		return a.reseal(ctx, kvs)
	}
	payload, err := a.openPayload(ctx, *anchorKV)
	if err != nil {
		return err
	}
	if len(payload) != 8+32 {
		return fmt.Errorf("%w: %s: malformed", ErrCorrupt, AnchorKey)
	}
	a.anchor.Revision = binary.BigEndian.Uint64(payload)
	copy(a.anchor.Digest[:], payload[8:])
	if legacy {
		return fmt.Errorf("%w: an anchored record is in the pre-anchor format", ErrRolledBack)
	}
	for i := range a.buckets {
		a.sums[i] = bucketSum(a.buckets[i])
	}
	if got := a.digest(); got != a.anchor.Digest {
		return fmt.Errorf("%w (at anchor revision %d)", ErrRolledBack, a.anchor.Revision)
	}
	for _, m := range a.buckets {
		for k, rev := range m {
			if rev > a.anchor.Revision {
				return fmt.Errorf("%w: %q was written at revision %d, after the anchor's %d", ErrRolledBack, k, rev, a.anchor.Revision)
			}
		}
	}
	return nil
}

// reseal writes a store that has no anchor yet (new, or written before
// anchors) in the current form, every value verified first, and anchors it.
func (a *AuthStore) reseal(ctx context.Context, kvs []KV) error {
	var ops []Op
	for _, kv := range kvs {
		if kv.Key == AnchorKey {
			continue
		}
		if _, ok := sealedRevision(kv.Value); ok {
			continue
		}
		v, err := a.sealer.Open(ctx, kv.Key, kv.Value)
		if err != nil {
			return a.openError(kv, err)
		}
		ops = append(ops, PutOp(kv.Key, v))
	}
	if len(ops) == 0 && len(kvs) == 0 {
		return nil // an empty store is anchored by its first write
	}
	for len(ops) > MaxTxnOps-1 {
		if err := a.Txn(ctx, nil, ops[:MaxTxnOps-1]); err != nil {
			return err
		}
		ops = ops[MaxTxnOps-1:]
	}
	return a.Txn(ctx, nil, ops)
}

// UnverifiedPayload returns the value a sealed payload carries (the payload
// with its tag already cut off), without checking anything: for the reads a
// sealed custodyd makes before it can use its MAC key. Values written before
// write revisions are returned as they are.
func UnverifiedPayload(payload []byte) []byte {
	if len(payload) >= sealHeader && bytes.Equal(payload[:2], sealMagic) {
		return payload[sealHeader:]
	}
	return payload
}

func sealedRevision(sealed []byte) (uint64, bool) {
	if len(sealed) < sealHeader || !bytes.Equal(sealed[:2], sealMagic) {
		return 0, false
	}
	return binary.BigEndian.Uint64(sealed[2:sealHeader]), true
}

func bucketSum(m map[string]uint64) [32]byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	h := sha256.New()
	var n [8]byte
	for _, k := range keys {
		binary.BigEndian.PutUint64(n[:], uint64(len(k)))
		h.Write(n[:])
		h.Write([]byte(k))
		binary.BigEndian.PutUint64(n[:], m[k])
		h.Write(n[:])
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// digest combines the bucket sums. Called with a.mu held (or before use).
func (a *AuthStore) digest() [32]byte {
	h := sha256.New()
	h.Write([]byte("custody.store.anchor.v1\n"))
	for i := range a.sums {
		h.Write(a.sums[i][:])
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

func (a *AuthStore) allAnchored() []string {
	var out []string
	for _, m := range a.buckets {
		for k := range m {
			out = append(out, k)
		}
	}
	return out
}

// Anchor returns the store's anchor now.
func (a *AuthStore) Anchor() Anchor {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.anchor
}

func (a *AuthStore) openError(kv KV, err error) error {
	if errors.Is(err, ErrTampered) {
		// The sealer's own message is dropped: it may describe the value.
		return fmt.Errorf("%w: key %q at revision %d", ErrTampered, kv.Key, kv.Revision)
	}
	return fmt.Errorf("%w: cannot verify %q: %w", ErrUnavailable, kv.Key, err)
}

func (a *AuthStore) openPayload(ctx context.Context, kv KV) ([]byte, error) {
	p, err := a.sealer.Open(ctx, kv.Key, kv.Value)
	if err != nil {
		return nil, a.openError(kv, err)
	}
	if len(p) < sealHeader || !bytes.Equal(p[:2], sealMagic) {
		return nil, fmt.Errorf("%w: key %q at revision %d: pre-anchor format", ErrTampered, kv.Key, kv.Revision)
	}
	return p[sealHeader:], nil
}

func (a *AuthStore) open(ctx context.Context, kv KV) (KV, error) {
	v, err := a.openPayload(ctx, kv)
	if err != nil {
		return KV{}, err
	}
	kv.Value = v
	return kv, nil
}

// Get implements Store.
func (a *AuthStore) Get(ctx context.Context, key string) (KV, error) {
	kv, err := a.inner.Get(ctx, key)
	if err != nil {
		return KV{}, err
	}
	return a.open(ctx, kv)
}

// List implements Store. One tampered value fails the whole list. The
// anchor record is never listed.
func (a *AuthStore) List(ctx context.Context, prefix, startAfter string, limit int) ([]KV, error) {
	kvs, err := a.inner.List(ctx, prefix, startAfter, limit)
	if err != nil {
		return nil, err
	}
	out := kvs[:0]
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
	return out, nil
}

// Txn implements Store.
func (a *AuthStore) Txn(ctx context.Context, conds []Cond, ops []Op) error {
	return a.txn(ctx, conds, ops, a.inner.Txn)
}

// txn seals a transaction on plaintext, moves the anchor with it when it
// writes anchored records, and hands the sealed transaction to commit (the
// wrapped store's Txn, or a leadership's fenced Txn).
func (a *AuthStore) txn(ctx context.Context, conds []Cond, ops []Op, commit func(context.Context, []Cond, []Op) error) error {
	if err := checkTxn(conds, ops); err != nil {
		return err
	}
	for _, op := range ops {
		if op.Key == AnchorKey {
			return fmt.Errorf("%w: %s is written by the store itself", ErrInvalid, AnchorKey)
		}
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
			return fmt.Errorf("%w: value condition on %q", ErrConflict, c.Key)
		case err != nil:
			return err
		case !condHolds(c, true, kv.Value, kv.Revision):
			return fmt.Errorf("%w: value condition on %q", ErrConflict, c.Key)
		}
		inConds[i] = RevisionIs(c.Key, kv.Revision)
	}
	if !slices.ContainsFunc(ops, func(op Op) bool { return a.anchored(op.Key) }) {
		// Unanchored records carry the current revision and do not move it.
		a.mu.Lock()
		rev := a.anchor.Revision
		a.mu.Unlock()
		inOps, err := a.sealOps(ctx, ops, rev)
		if err != nil {
			return err
		}
		return commit(ctx, inConds, inOps)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	rev := a.anchor.Revision + 1
	inOps, err := a.sealOps(ctx, ops, rev)
	if err != nil {
		return err
	}
	// The anchor moves in the same transaction; memory follows only if it
	// commits.
	touched := map[int]map[string]uint64{}
	for _, op := range ops {
		if !a.anchored(op.Key) {
			continue
		}
		b := bucketOf(op.Key)
		if touched[b] == nil {
			touched[b] = maps(a.buckets[b])
		}
		if op.Type == OpPut {
			touched[b][op.Key] = rev
		} else {
			delete(touched[b], op.Key)
		}
	}
	sums := a.sums
	for b, m := range touched {
		sums[b] = bucketSum(m)
	}
	old := a.sums
	a.sums = sums
	next := Anchor{Revision: rev, Digest: a.digest()}
	a.sums = old
	payload := make([]byte, 0, sealHeader+8+32)
	payload = append(payload, sealMagic...)
	payload = binary.BigEndian.AppendUint64(payload, rev)
	payload = binary.BigEndian.AppendUint64(payload, next.Revision)
	payload = append(payload, next.Digest[:]...)
	sealed, err := a.sealer.Seal(ctx, AnchorKey, payload)
	if err != nil {
		return fmt.Errorf("%w: seal %q: %w", ErrUnavailable, AnchorKey, err)
	}
	inOps = append(inOps, PutOp(AnchorKey, sealed))
	if err := commit(ctx, inConds, inOps); err != nil {
		return err
	}
	for b, m := range touched {
		a.buckets[b] = m
	}
	a.sums, a.anchor = sums, next
	return nil
}

// sealOps seals every put's value with its write revision.
func (a *AuthStore) sealOps(ctx context.Context, ops []Op, rev uint64) ([]Op, error) {
	inOps := make([]Op, len(ops), len(ops)+1)
	for i, op := range ops {
		inOps[i] = op
		if op.Type != OpPut {
			continue
		}
		payload := make([]byte, 0, sealHeader+len(op.Value))
		payload = append(payload, sealMagic...)
		payload = binary.BigEndian.AppendUint64(payload, rev)
		payload = append(payload, op.Value...)
		sealed, err := a.sealer.Seal(ctx, op.Key, payload)
		if err != nil {
			return nil, fmt.Errorf("%w: seal %q: %w", ErrUnavailable, op.Key, err)
		}
		inOps[i].Value = sealed
	}
	return inOps, nil
}

func maps(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Watch implements Store. A tampered value in an event ends the watch with
// a final ErrTampered event. Anchor writes are not delivered.
func (a *AuthStore) Watch(ctx context.Context, prefix string) (<-chan Event, error) {
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
			if ev.Err == nil && ev.KV.Key == AnchorKey {
				continue
			}
			if ev.Err == nil && ev.Type == OpPut {
				kv, err := a.open(ctx, ev.KV)
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
func (a *AuthStore) Revision(ctx context.Context) (int64, error) { return a.inner.Revision(ctx) }

// Close implements Store; it closes the wrapped store.
func (a *AuthStore) Close() error { return a.inner.Close() }

// String names the anchor, for logs.
func (x Anchor) String() string {
	return fmt.Sprintf("revision %d digest %s", x.Revision, strings.ToLower(hex.EncodeToString(x.Digest[:8])))
}
