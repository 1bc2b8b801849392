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
	"time"
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
	// FollowTimeout bounds how long a read or write of a shared store waits
	// for this process's verified view to catch up with other writers
	// before it fails with ErrUnavailable (default DefaultFollowTimeout).
	FollowTimeout time.Duration
}

// DefaultFollowTimeout is AuthOptions.FollowTimeout's default.
const DefaultFollowTimeout = 10 * time.Second

// AuthStore seals every value on the way in and opens it on the way out,
// and keeps the anchor. It implements Store.
//
// On a shared store (one that several replicas write: see Shared) it also
// follows the other writers (authshared.go): the anchor is written with a
// compare-and-swap on its revision, every other writer's transaction is
// verified against the anchor it carries before this process's view moves,
// and reads and watches of anchored records hand out only what that view
// vouches for.
type AuthStore struct {
	inner  Store
	sealer Sealer
	opts   AuthOptions
	shared bool

	mu sync.Mutex // serialises this process's anchored writes

	vmu     sync.RWMutex // guards the verified view below
	anchor  Anchor
	buckets [256]map[string]uint64 // anchored key -> write revision, by first byte of SHA-256(key)
	sums    [256][32]byte

	// Shared stores only (authshared.go).
	anchorRev  int64         // store revision of the meta/anchor write in the view (0: none)
	advanced   chan struct{} // closed and replaced whenever the view moves
	degraded   error         // why the view cannot be re-read now (see Err)
	hub        *hub          // verified events, for Watch
	stopFollow context.CancelFunc
	followDone chan struct{}
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
// On a store with one writer (bbolt: its file lock ensures one process),
// writes of anchored records are serialised by this process and the anchor
// is kept in memory. A shared store (below) may have several.
// ValueIs conditions compare plaintext: Txn reads and verifies the current
// value and turns the condition into a revision check, so it stays atomic.
// The seal's overhead counts against MaxValueSize.
//
// On a shared store (several replicas: see Shared) writes of anchored
// records are not serialised by one process. The anchor is then written
// only if it is still the one this process verified last (compare-and-swap
// on its revision); a process that loses the race catches up and tries
// again. It catches up by following the store: each transaction of another
// writer is applied to this process's view only once the anchor written in
// the same transaction verifies (sealed by the HSM, revision one more than
// the view's, digest equal to the view with the transaction's records
// applied). Reads of anchored records return only values whose write
// revision is the one the view holds (waiting for the view to catch up
// when the store is ahead), and Watch delivers a transaction's anchored
// records only once it verified. Someone who can write the store but not
// use the HSM cannot forge a value (ErrTampered), cannot replay an older
// one or delete one (ErrRolledBack: the anchor no longer matches), and
// cannot move the anchor back (anchored writes then fail with
// ErrRolledBack). A transaction that does not verify is never applied or
// delivered; reads of what it wrote fail as they would at start.
func Authenticated(ctx context.Context, s Store, sealer Sealer, o AuthOptions) (*AuthStore, error) {
	if o.Unanchored == nil {
		o.Unanchored = func(string) bool { return false }
	}
	if o.FollowTimeout <= 0 {
		o.FollowTimeout = DefaultFollowTimeout
	}
	a := &AuthStore{inner: s, sealer: sealer, opts: o}
	empty := bucketSum(nil)
	for i := range a.buckets {
		a.buckets[i] = map[string]uint64{}
		a.sums[i] = empty
	}
	if _, ok := s.(Shared); ok {
		if err := a.openShared(ctx); err != nil {
			return nil, err
		}
		return a, nil
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

// view is a verified state of the store's anchored records, as read by
// readView.
type view struct {
	buckets   [256]map[string]uint64
	sums      [256][32]byte
	anchor    Anchor
	anchorRev int64 // store revision of the anchor's write (0: no anchor)
	hasAnchor bool
	legacy    bool // some anchored record is in the pre-anchor format
	anchored  int  // anchored records
	kvs       []KV
}

// readView reads the anchor and every anchored record's write revision
// (from the sealed bytes; each value is verified when it is read), and
// compares. A store without an anchor is returned with hasAnchor false
// when it may be anchored by resealing (new, or written before anchors).
func (a *AuthStore) readView(ctx context.Context) (*view, error) {
	kvs, err := a.inner.List(ctx, "", "", 0)
	if err != nil {
		return nil, err
	}
	v := &view{kvs: kvs}
	empty := bucketSum(nil)
	for i := range v.buckets {
		v.buckets[i] = map[string]uint64{}
		v.sums[i] = empty
	}
	var anchorKV *KV
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
				return nil, a.openError(kv, err)
			}
			v.legacy = true
			continue
		}
		v.buckets[bucketOf(kv.Key)][kv.Key] = rev
		v.anchored++
	}
	if anchorKV == nil {
		if !v.legacy && v.anchored > 0 {
			return nil, fmt.Errorf("%w: %s is missing", ErrRolledBack, AnchorKey)
		}
		return v, nil
	}
	v.hasAnchor, v.anchorRev = true, anchorKV.Revision
	if v.anchor, err = a.openAnchor(ctx, *anchorKV); err != nil {
		return nil, err
	}
	if v.legacy {
		return nil, fmt.Errorf("%w: an anchored record is in the pre-anchor format", ErrRolledBack)
	}
	for i := range v.buckets {
		v.sums[i] = bucketSum(v.buckets[i])
	}
	if got := digestOf(&v.sums); got != v.anchor.Digest {
		return nil, fmt.Errorf("%w (at anchor revision %d)", ErrRolledBack, v.anchor.Revision)
	}
	for _, m := range v.buckets {
		for k, rev := range m {
			if rev > v.anchor.Revision {
				return nil, fmt.Errorf("%w: %q was written at revision %d, after the anchor's %d", ErrRolledBack, k, rev, v.anchor.Revision)
			}
		}
	}
	return v, nil
}

// openAnchor verifies and decodes the anchor's record.
func (a *AuthStore) openAnchor(ctx context.Context, kv KV) (Anchor, error) {
	payload, err := a.openPayload(ctx, kv)
	if err != nil {
		return Anchor{}, err
	}
	if len(payload) != 8+32 {
		return Anchor{}, fmt.Errorf("%w: %s: malformed", ErrCorrupt, AnchorKey)
	}
	var x Anchor
	x.Revision = binary.BigEndian.Uint64(payload)
	copy(x.Digest[:], payload[8:])
	return x, nil
}

// useView makes v the view in force. Called with a.vmu held for writing
// (or before use).
func (a *AuthStore) useView(v *view) {
	a.buckets, a.sums, a.anchor, a.anchorRev = v.buckets, v.sums, v.anchor, v.anchorRev
}

// load reads and checks the store (readView) and anchors a store that has
// no anchor yet.
func (a *AuthStore) load(ctx context.Context) error {
	v, err := a.readView(ctx)
	if err != nil {
		return err
	}
	a.useView(v)
	if !v.hasAnchor {
		return a.reseal(ctx, v.kvs)
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

// digest combines the bucket sums. Called with a.vmu held (or before use).
func (a *AuthStore) digest() [32]byte { return digestOf(&a.sums) }

func digestOf(sums *[256][32]byte) [32]byte {
	h := sha256.New()
	h.Write([]byte("custody.store.anchor.v1\n"))
	for i := range sums {
		h.Write(sums[i][:])
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Anchor returns the store's anchor now (on a shared store: the newest one
// this process has verified).
func (a *AuthStore) Anchor() Anchor {
	a.vmu.RLock()
	defer a.vmu.RUnlock()
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
	if a.shared {
		return a.getShared(ctx, key)
	}
	kv, err := a.inner.Get(ctx, key)
	if err != nil {
		return KV{}, err
	}
	return a.open(ctx, kv)
}

// List implements Store. One tampered value fails the whole list. The
// anchor record is never listed.
func (a *AuthStore) List(ctx context.Context, prefix, startAfter string, limit int) ([]KV, error) {
	if a.shared {
		return a.listShared(ctx, prefix, startAfter, limit)
	}
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
	_, err := a.txn(ctx, conds, ops, revTxn(a.inner))
	return err
}

// TxnRev implements RevTxner.
func (a *AuthStore) TxnRev(ctx context.Context, conds []Cond, ops []Op) (int64, error) {
	return a.txn(ctx, conds, ops, revTxn(a.inner))
}

// txn seals a transaction on plaintext, moves the anchor with it when it
// writes anchored records, and hands the sealed transaction to commit (the
// wrapped store's Txn, or a leadership's fenced Txn).
func (a *AuthStore) txn(ctx context.Context, conds []Cond, ops []Op, commit func(context.Context, []Cond, []Op) (int64, error)) (int64, error) {
	if err := checkTxn(conds, ops); err != nil {
		return 0, err
	}
	for _, op := range ops {
		if op.Key == AnchorKey {
			return 0, fmt.Errorf("%w: %s is written by the store itself", ErrInvalid, AnchorKey)
		}
	}
	if a.shared {
		return a.txnShared(ctx, conds, ops, commit)
	}
	inConds, err := a.plainConds(ctx, conds)
	if err != nil {
		return 0, err
	}
	if !slices.ContainsFunc(ops, func(op Op) bool { return a.anchored(op.Key) }) {
		// Unanchored records carry the current revision and do not move it.
		inOps, err := a.sealOps(ctx, ops, a.Anchor().Revision)
		if err != nil {
			return 0, err
		}
		return commit(ctx, inConds, inOps)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p, err := a.prepare(ctx, ops)
	if err != nil {
		return 0, err
	}
	crev, err := commit(ctx, inConds, p.ops)
	if err != nil {
		return 0, err
	}
	a.vmu.Lock()
	a.installLocked(p)
	a.vmu.Unlock()
	return crev, nil
}

// plainConds turns ValueIs conditions, which compare plaintext, into
// revision checks of the values they were verified against.
func (a *AuthStore) plainConds(ctx context.Context, conds []Cond) ([]Cond, error) {
	inConds := make([]Cond, len(conds))
	for i, c := range conds {
		if c.Type != CondValue {
			inConds[i] = c
			continue
		}
		kv, err := a.Get(ctx, c.Key)
		switch {
		case errors.Is(err, ErrNotFound):
			return nil, fmt.Errorf("%w: value condition on %q", ErrConflict, c.Key)
		case err != nil:
			return nil, err
		case !condHolds(c, true, kv.Value, kv.Revision):
			return nil, fmt.Errorf("%w: value condition on %q", ErrConflict, c.Key)
		}
		inConds[i] = RevisionIs(c.Key, kv.Revision)
	}
	return inConds, nil
}

// prepared is an anchored transaction sealed against the view it was
// prepared on: its sealed ops (the anchor's write last) and the view it
// moves to if it commits.
type prepared struct {
	ops     []Op
	touched map[int]map[string]uint64
	sums    [256][32]byte
	next    Anchor
	// base is the view's anchor revision and store revision of the anchor
	// write when it was prepared.
	base    uint64
	baseRev int64
}

// prepare seals ops at the view's next anchor revision and the anchor that
// goes with them. Called with a.mu held.
func (a *AuthStore) prepare(ctx context.Context, ops []Op) (*prepared, error) {
	a.vmu.RLock()
	p := &prepared{touched: map[int]map[string]uint64{}, base: a.anchor.Revision, baseRev: a.anchorRev}
	rev := a.anchor.Revision + 1
	for _, op := range ops {
		if !a.anchored(op.Key) {
			continue
		}
		b := bucketOf(op.Key)
		if p.touched[b] == nil {
			p.touched[b] = maps(a.buckets[b])
		}
		if op.Type == OpPut {
			p.touched[b][op.Key] = rev
		} else {
			delete(p.touched[b], op.Key)
		}
	}
	p.sums = a.sums
	a.vmu.RUnlock()
	for b, m := range p.touched {
		p.sums[b] = bucketSum(m)
	}
	p.next = Anchor{Revision: rev, Digest: digestOf(&p.sums)}
	inOps, err := a.sealOps(ctx, ops, rev)
	if err != nil {
		return nil, err
	}
	sealed, err := a.sealAnchor(ctx, p.next)
	if err != nil {
		return nil, err
	}
	p.ops = append(inOps, PutOp(AnchorKey, sealed))
	return p, nil
}

func (a *AuthStore) sealAnchor(ctx context.Context, next Anchor) ([]byte, error) {
	payload := make([]byte, 0, sealHeader+8+32)
	payload = append(payload, sealMagic...)
	payload = binary.BigEndian.AppendUint64(payload, next.Revision)
	payload = binary.BigEndian.AppendUint64(payload, next.Revision)
	payload = append(payload, next.Digest[:]...)
	sealed, err := a.sealer.Seal(ctx, AnchorKey, payload)
	if err != nil {
		return nil, fmt.Errorf("%w: seal %q: %w", ErrUnavailable, AnchorKey, err)
	}
	return sealed, nil
}

// installLocked makes a committed transaction's view the current one.
// Called with a.vmu held for writing.
func (a *AuthStore) installLocked(p *prepared) {
	for b, m := range p.touched {
		a.buckets[b] = m
	}
	a.sums, a.anchor = p.sums, p.next
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
// a final ErrTampered event. Anchor writes are not delivered. On a shared
// store the events of a transaction that writes anchored records are
// delivered once it verified against its anchor; a watch ends with the
// store's final error (Err) if the store fails verification, and with
// ErrWatchLagged whenever this process had to re-read the store.
func (a *AuthStore) Watch(ctx context.Context, prefix string) (<-chan Event, error) {
	if a.shared {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return a.hub.add(ctx, prefix, DefaultWatchBuffer)
	}
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
func (a *AuthStore) Close() error {
	if a.stopFollow != nil {
		a.stopFollow()
	}
	err := a.inner.Close()
	if a.followDone != nil {
		<-a.followDone
	}
	return err
}

// String names the anchor, for logs.
func (x Anchor) String() string {
	return fmt.Sprintf("revision %d digest %s", x.Revision, strings.ToLower(hex.EncodeToString(x.Digest[:8])))
}
