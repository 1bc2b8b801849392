package seal

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/secmem"
)

// DefaultProgressTTL is how long accepted shares wait for the rest.
const DefaultProgressTTL = 15 * time.Minute

// Outstanding nonces are bounded per requester (the mTLS identity that
// asked for them): beyond maxNoncesPerRequester the oldest of that
// requester's is dropped, so one caller asking for targets again and again
// spends only its own nonces, never those handed to the other officers.
// maxNonces bounds them all (memory); beyond it the oldest nonce of the
// requester holding the most is dropped.
const (
	maxNoncesPerRequester = 16
	maxNonces             = 1024
)

// Progress is how far an unseal has come.
type Progress struct {
	Have, Need int
	// Officers whose shares are accepted, in order.
	Officers []string
	// Expires is when accepted shares are discarded (zero when none).
	Expires time.Time
}

// Unsealer collects shares for one record in a sealed custodyd. It is safe
// for concurrent use.
//
// Invariants: a nonce is issued for one officer, one share and this
// ephemeral key and is consumed by the first submission that carries it,
// whatever its outcome; one requester holds at most maxNoncesPerRequester
// outstanding nonces, so asking for more drops only its own; accepted
// shares are in locked memory and are destroyed when they are combined,
// discarded or expire.
type Unsealer struct {
	rec *Record
	eph *EphemeralKey
	ttl time.Duration
	now func() time.Time

	mu       sync.Mutex
	nonces   map[string]nonceEntry
	order    []string
	accepted map[int]*secmem.Buffer
	by       []string
	started  time.Time
}

type nonceEntry struct {
	index     int
	requester string
	expires   time.Time
}

// NewUnsealer starts collecting shares for rec; submissions must be
// encrypted to eph. now is the clock (time.Now in production).
func NewUnsealer(rec *Record, eph *EphemeralKey, ttl time.Duration, now func() time.Time) (*Unsealer, error) {
	if err := rec.Validate(); err != nil {
		return nil, err
	}
	if ttl <= 0 {
		ttl = DefaultProgressTTL
	}
	if now == nil {
		now = time.Now
	}
	return &Unsealer{rec: rec, eph: eph, ttl: ttl, now: now, nonces: map[string]nonceEntry{}, accepted: map[int]*secmem.Buffer{}}, nil
}

// Record is the record being unsealed.
func (u *Unsealer) Record() *Record { return u.rec }

// Target is TargetFor with no requester: every such nonce shares one
// allowance.
func (u *Unsealer) Target(officerFP string) (Envelope, Target, error) {
	return u.TargetFor("", officerFP)
}

// TargetFor returns what the officer with signing-key fingerprint officerFP
// needs to submit: their envelope and a fresh one-time nonce, counted
// against requester's allowance of outstanding nonces.
func (u *Unsealer) TargetFor(requester, officerFP string) (Envelope, Target, error) {
	env, ok := u.rec.Holder(officerFP)
	if !ok {
		return Envelope{}, Target{}, fmt.Errorf("%w: no share for signing key %s", ErrNotOfficer, short(officerFP))
	}
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return Envelope{}, Target{}, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	key := hex.EncodeToString(nonce)
	u.nonces[key] = nonceEntry{index: env.Index, requester: requester, expires: u.now().Add(u.ttl)}
	u.order = append(u.order, key)
	u.boundNoncesLocked(requester)
	return env, Target{Ref: u.rec.Ref(), Index: env.Index, EphemeralKey: u.eph.PublicKey(), Nonce: nonce}, nil
}

// boundNoncesLocked drops the oldest nonces of requester beyond its
// allowance, then, while there are more than maxNonces in all, the oldest
// of the requester holding the most.
func (u *Unsealer) boundNoncesLocked(requester string) {
	held := map[string]int{}
	for _, k := range u.order {
		held[u.nonces[k].requester]++
	}
	for held[requester] > maxNoncesPerRequester {
		u.dropOldestLocked(requester)
		held[requester]--
	}
	for len(u.order) > maxNonces {
		most := requester
		for r, n := range held {
			if n > held[most] {
				most = r
			}
		}
		u.dropOldestLocked(most)
		held[most]--
	}
}

// dropOldestLocked forgets requester's oldest outstanding nonce.
func (u *Unsealer) dropOldestLocked(requester string) {
	for i, k := range u.order {
		if u.nonces[k].requester == requester {
			delete(u.nonces, k)
			u.order = slices.Delete(u.order, i, i+1)
			return
		}
	}
}

// Submit checks one officer's submission and keeps the share if it is good.
// When the threshold is reached it returns the PIN (in locked memory, for
// the caller to log in with and destroy) and forgets every share. holder
// names the officer the submission is signed by, when that is known, for
// the audit record.
func (u *Unsealer) Submit(s *Submission) (p Progress, pin *secmem.Buffer, holder string, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.expireLocked()
	// The nonce goes first, and whatever happens next it is spent.
	key := hex.EncodeToString(s.Nonce)
	ne, ok := u.nonces[key]
	if ok {
		delete(u.nonces, key)
		u.order = slices.DeleteFunc(u.order, func(k string) bool { return k == key })
	}
	if !ok || u.now().After(ne.expires) {
		return u.progressLocked(), nil, "", ErrReplayed
	}
	env, known := u.rec.Holder(s.OfficerFingerprint)
	if known {
		holder = env.Officer
	}
	switch {
	case s.EphemeralFingerprint != u.eph.Fingerprint() || !bytes.Equal(s.Ref.VaultID, u.rec.VaultID) || s.Ref.Epoch != u.rec.Epoch:
		return u.progressLocked(), nil, holder, ErrWrongTarget
	case !known || !verify(env.OfficerKey, domainSubmit, s.digest(), s.Signature):
		return u.progressLocked(), nil, holder, fmt.Errorf("%w: signing key %s", ErrNotOfficer, short(s.OfficerFingerprint))
	case s.Index != env.Index || ne.index != env.Index:
		return u.progressLocked(), nil, holder, fmt.Errorf("%w: %s holds share %d, not %d", ErrWrongTarget, env.Officer, env.Index, s.Index)
	case u.accepted[env.Index] != nil:
		return u.progressLocked(), nil, holder, fmt.Errorf("%w: share %d (%s)", ErrDuplicate, env.Index, env.Officer)
	}
	pt, err := openWith(u.eph.priv, submitInfo(u.rec.Ref(), env.Index, u.eph.Fingerprint(), s.Nonce), s.Sealed)
	if err != nil {
		return u.progressLocked(), nil, holder, fmt.Errorf("%w: share %d (%s) does not decrypt", ErrBadShare, env.Index, env.Officer)
	}
	share, err := secmem.From(pt)
	if err != nil {
		return u.progressLocked(), nil, holder, err
	}
	if err := checkShare(u.rec.Ref(), env.Index, share.Bytes(), env.Commitment); err != nil {
		share.Destroy()
		return u.progressLocked(), nil, holder, fmt.Errorf("%w (%s)", err, env.Officer)
	}
	if len(u.accepted) == 0 {
		u.started = u.now()
	}
	u.accepted[env.Index] = share
	u.by = append(u.by, env.Officer)
	p = u.progressLocked()
	if len(u.accepted) < u.rec.Threshold {
		return p, nil, holder, nil
	}
	pin, err = u.combineLocked()
	return p, pin, holder, err
}

func (u *Unsealer) combineLocked() (*secmem.Buffer, error) {
	shares := make([]quorum.Share, 0, len(u.accepted))
	for _, b := range u.accepted {
		shares = append(shares, b.Bytes())
	}
	raw, err := quorum.Combine(shares)
	u.resetLocked()
	if err != nil {
		return nil, err
	}
	return secmem.From(raw)
}

// Progress reports the shares accepted so far.
func (u *Unsealer) Progress() Progress {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.expireLocked()
	return u.progressLocked()
}

func (u *Unsealer) progressLocked() Progress {
	p := Progress{Have: len(u.accepted), Need: u.rec.Threshold, Officers: slices.Clone(u.by)}
	if len(u.accepted) > 0 {
		p.Expires = u.started.Add(u.ttl)
	}
	return p
}

// Expire discards accepted shares older than the progress TTL and returns
// the officers whose shares were discarded (nil if nothing expired).
func (u *Unsealer) Expire() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.expireLocked()
}

func (u *Unsealer) expireLocked() []string {
	now := u.now()
	for k, ne := range u.nonces {
		if now.After(ne.expires) {
			delete(u.nonces, k)
			u.order = slices.DeleteFunc(u.order, func(o string) bool { return o == k })
		}
	}
	if len(u.accepted) == 0 || !now.After(u.started.Add(u.ttl)) {
		return nil
	}
	by := slices.Clone(u.by)
	u.resetLocked()
	return by
}

// Reset discards accepted shares and outstanding nonces.
func (u *Unsealer) Reset() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.resetLocked()
	clear(u.nonces)
	u.order = nil
}

func (u *Unsealer) resetLocked() {
	for k, b := range u.accepted {
		b.Destroy()
		delete(u.accepted, k)
	}
	u.by = nil
	u.started = time.Time{}
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}
