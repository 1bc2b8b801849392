package quorum

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// State is where a proposal is in its life.
type State string

// Proposal states.
const (
	// StatePending: fewer than Threshold approvals so far.
	StatePending State = "pending"
	// StateTimeLocked: enough approvals; a widening proposal waits until
	// Status.Until for a veto.
	StateTimeLocked State = "time-locked"
	// StateReady: may be executed now.
	StateReady State = "ready"
	// StateExecuted: MarkExecuted was called.
	StateExecuted State = "executed"
	// StateVetoed: an officer vetoed it.
	StateVetoed State = "vetoed"
	// StateExpired: not executed before Expires.
	StateExpired State = "expired"
)

// Status describes a proposal at a moment.
type Status struct {
	State State `json:"state"`
	// Approvals counts approvals by officers in the current set.
	Approvals int  `json:"approvals"`
	Threshold int  `json:"threshold"`
	Widening  bool `json:"widening"`
	// Until is the end of the time-lock once the threshold is reached (zero
	// otherwise, and for proposals that do not widen access).
	Until time.Time `json:"until,omitzero"`
}

// Signed is an officer's signature recorded in the ledger, with the key it
// verifies under so it can be re-verified after the officer set changes.
type Signed struct {
	Officer   string    `json:"officer"`
	PublicKey []byte    `json:"public_key"`
	Signature []byte    `json:"signature"`
	At        time.Time `json:"at"`
}

// Record is the ledger's state for one proposal.
//
// Whether a proposal widens access is decided once, by Decide, when it
// first has its threshold of approvals, against the state in force then;
// until that moment Widening is only the prediction made when it was
// proposed. A widening proposal is time-locked from LockedFrom.
type Record struct {
	Proposal   Proposal      `json:"proposal"`
	Widening   bool          `json:"widening"`
	Decided    bool          `json:"decided,omitempty"`
	LockedFrom time.Time     `json:"locked_from,omitzero"`
	TimeLock   time.Duration `json:"time_lock"`
	Approvals  []Signed      `json:"approvals,omitempty"`
	Veto       *Signed       `json:"veto,omitempty"`
	ExecutedAt time.Time     `json:"executed_at,omitzero"`
	digest     Digest
	canon      []byte // the proposal's canonical bytes (never modified): clones parse them
}

// LedgerOptions configure a Ledger.
type LedgerOptions struct {
	// TimeLock applies to widening proposals; 0 means DefaultTimeLock.
	TimeLock time.Duration `json:"time_lock"`
	// AllowDev permits a threshold of 1 (development only).
	AllowDev bool `json:"allow_dev"`
}

// maxClockSkew is how far in the future a proposal's Created may be.
const maxClockSkew = 5 * time.Minute

// Ledger is the governance state machine. It is safe for concurrent use;
// the caller persists Snapshot after every successful change.
type Ledger struct {
	mu       sync.Mutex
	officers OfficerSet
	opts     LedgerOptions
	records  map[string]*Record
}

// NewLedger returns an empty ledger for the officer set.
func NewLedger(officers OfficerSet, opts LedgerOptions) (*Ledger, error) {
	if opts.TimeLock < 0 {
		return nil, fmt.Errorf("%w: time_lock: negative", ErrInvalidState)
	}
	if opts.TimeLock == 0 {
		opts.TimeLock = DefaultTimeLock
	}
	if err := officers.Validate(opts.AllowDev); err != nil {
		return nil, err
	}
	return &Ledger{officers: officers.clone(), opts: opts, records: map[string]*Record{}}, nil
}

// Officers returns the current officer set.
func (l *Ledger) Officers() OfficerSet {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.officers.clone()
}

// SetOfficers replaces the officer set; the caller does this only when an
// add-officer, remove-officer or set-threshold proposal executes. Recorded
// approvals by officers no longer in the set (or whose key changed) stop
// counting.
func (l *Ledger) SetOfficers(s OfficerSet) error {
	if err := s.Validate(l.opts.AllowDev); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.officers = s.clone()
	return nil
}

// Propose records p. cur is the state p is compared with to decide whether
// it widens access (see Widening). A widening proposal must leave at least
// the time-lock between now and its expiry, or it could never execute.
func (l *Ledger) Propose(p Proposal, cur Current, now time.Time) error {
	b, err := p.CanonicalBytes()
	if err != nil {
		return err
	}
	// Keep a private deep copy, so the caller's later changes to maps or
	// slices inside p cannot alter what the ledger holds.
	if p, err = ParseCanonical(b); err != nil {
		return err
	}
	d := Digest(sha256.Sum256(b))
	if p.Created.After(now.Add(maxClockSkew)) {
		return invalid("created: in the future")
	}
	if !now.Before(p.Expires) {
		return fmt.Errorf("%w: proposal %q", ErrExpired, p.ID)
	}
	widening := Widening(p.Payload, cur)
	if widening && p.Expires.Sub(now) <= l.opts.TimeLock {
		return invalid("expires: a widening proposal must outlive the %s time-lock", l.opts.TimeLock)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, dup := l.records[p.ID]; dup {
		return fmt.Errorf("%w: %q", ErrDuplicateProposal, p.ID)
	}
	l.records[p.ID] = &Record{Proposal: p, Widening: widening, TimeLock: l.opts.TimeLock, digest: d, canon: b}
	return nil
}

// record returns the record for p after checking p is the proposal that
// was recorded, byte for byte.
func (l *Ledger) record(p Proposal) (*Record, error) {
	r, ok := l.records[p.ID]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownProposal, p.ID)
	}
	d, err := p.Digest()
	if err != nil {
		return nil, err
	}
	if d != r.digest {
		return nil, fmt.Errorf("%w: %q", ErrProposalMismatch, p.ID)
	}
	return r, nil
}

// Approve records officer's approval of p, signed with SignApproval, and
// returns the proposal's status afterwards. The approval that brings p to
// its threshold also decides, against cur (the state in force now), whether
// p widens access (see Decide). It refuses a proposal that is
// executed, vetoed or expired, an unknown officer, a second approval by the
// same officer, a signature made for another proposal (ErrReplay) and any
// other signature that does not verify (ErrBadSignature).
func (l *Ledger) Approve(p Proposal, officer string, sig []byte, now time.Time, cur Current) (Status, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, err := l.record(p)
	if err != nil {
		return Status{}, err
	}
	if err := l.open(r, now); err != nil {
		return Status{}, err
	}
	o, ok := l.officers.Lookup(officer)
	if !ok {
		return Status{}, fmt.Errorf("%w: %q", ErrUnknownOfficer, officer)
	}
	for _, a := range r.Approvals {
		if a.Officer == officer {
			return Status{}, fmt.Errorf("%w: %q on %q", ErrDuplicateApproval, officer, p.ID)
		}
	}
	if err := l.verifyFor(r, o, approvalDomain, sig); err != nil {
		return Status{}, err
	}
	r.Approvals = append(r.Approvals, Signed{Officer: o.Name, PublicKey: bytes.Clone(o.PublicKey), Signature: bytes.Clone(sig), At: now})
	return l.decide(r, cur, now), nil
}

// Veto records officer's veto of p, signed with SignVeto. Any one officer
// may veto, at any time before p executes or expires; it is final.
func (l *Ledger) Veto(p Proposal, officer string, sig []byte, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, err := l.record(p)
	if err != nil {
		return err
	}
	if err := l.open(r, now); err != nil {
		return err
	}
	o, ok := l.officers.Lookup(officer)
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownOfficer, officer)
	}
	if err := l.verifyFor(r, o, vetoDomain, sig); err != nil {
		return err
	}
	r.Veto = &Signed{Officer: o.Name, PublicKey: bytes.Clone(o.PublicKey), Signature: bytes.Clone(sig), At: now}
	return nil
}

// open refuses actions on proposals that are finished.
func (l *Ledger) open(r *Record, now time.Time) error {
	switch {
	case !r.ExecutedAt.IsZero():
		return fmt.Errorf("%w: %q", ErrExecuted, r.Proposal.ID)
	case r.Veto != nil:
		return fmt.Errorf("%w: %q", ErrVetoed, r.Proposal.ID)
	case !now.Before(r.Proposal.Expires):
		return fmt.Errorf("%w: %q", ErrExpired, r.Proposal.ID)
	}
	return nil
}

// verifyFor checks sig over r's digest. When it fails, it tells a replay
// (the officer's valid signature over another recorded proposal) from a
// forgery, so the audit log can say which.
func (l *Ledger) verifyFor(r *Record, o Officer, domain string, sig []byte) error {
	err := verify(o, domain, r.digest, sig)
	if err == nil {
		return nil
	}
	for id, other := range l.records {
		if id != r.Proposal.ID && verify(o, domain, other.digest, sig) == nil {
			return fmt.Errorf("%w: officer %q signed %q, not %q", ErrReplay, o.Name, id, r.Proposal.ID)
		}
	}
	return err
}

// Status reports where p stands at now.
func (l *Ledger) Status(p Proposal, now time.Time) (Status, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, err := l.record(p)
	if err != nil {
		return Status{}, err
	}
	return l.status(r, now), nil
}

func (l *Ledger) status(r *Record, now time.Time) Status {
	st := Status{Threshold: l.officers.Threshold, Widening: r.Widening}
	// Count approvals by officers still in the set with the same key, and
	// find when the threshold was reached.
	var times []time.Time
	for _, a := range r.Approvals {
		if o, ok := l.officers.Lookup(a.Officer); ok && bytes.Equal(o.PublicKey, a.PublicKey) {
			times = append(times, a.At)
		}
	}
	st.Approvals = len(times)
	if r.Decided && r.Widening {
		st.Until = r.LockedFrom.Add(r.TimeLock)
	}
	switch {
	case !r.ExecutedAt.IsZero():
		st.State = StateExecuted
	case r.Veto != nil:
		st.State = StateVetoed
	case !now.Before(r.Proposal.Expires):
		st.State = StateExpired
	case st.Approvals < st.Threshold:
		st.State = StatePending
	case r.Decided && now.Before(st.Until):
		st.State = StateTimeLocked
	default:
		st.State = StateReady
	}
	return st
}

// Decide settles, once, whether p widens access, against cur: the state in
// force now, when p has just reached (or is found at) its threshold of
// approvals. A widening proposal is then time-locked from now; one that
// does not widen is Ready at once. Before the threshold, and after the
// decision, Decide only reports the status.
func (l *Ledger) Decide(p Proposal, cur Current, now time.Time) (Status, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, err := l.record(p)
	if err != nil {
		return Status{}, err
	}
	return l.decide(r, cur, now), nil
}

func (l *Ledger) decide(r *Record, cur Current, now time.Time) Status {
	st := l.status(r, now)
	if r.Decided || st.State != StateReady {
		return st
	}
	r.Decided = true
	r.Widening = Widening(r.Proposal.Payload, cur)
	if r.Widening {
		r.LockedFrom = now
		// The lock in force now, if longer than the one of the day it was
		// filed: officers who raised it since are owed that veto window.
		r.TimeLock = max(r.TimeLock, l.opts.TimeLock)
	}
	return l.status(r, now)
}

// MarkExecuted records that p has been carried out. It refuses unless p is
// Ready at now, so a proposal executes at most once.
func (l *Ledger) MarkExecuted(p Proposal, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, err := l.record(p)
	if err != nil {
		return err
	}
	st := l.status(r, now)
	switch st.State {
	case StateReady:
		if !r.Decided {
			return fmt.Errorf("%w: %q has not been decided (call Decide)", ErrNotReady, p.ID)
		}
		r.ExecutedAt = now
		return nil
	case StateExecuted:
		return fmt.Errorf("%w: %q", ErrExecuted, p.ID)
	case StateVetoed:
		return fmt.Errorf("%w: %q", ErrVetoed, p.ID)
	case StateExpired:
		return fmt.Errorf("%w: %q", ErrExpired, p.ID)
	}
	return fmt.Errorf("%w: %q is %s", ErrNotReady, p.ID, st.State)
}

// ForgetExpired drops the records of proposals that expired before cutoff
// and returns their IDs. Such a proposal can change no more (it was
// executed, vetoed or let expire) and cannot be proposed again (Propose
// refuses a proposal past its expiry), so forgetting it keeps the ledger
// bounded without opening a replay.
func (l *Ledger) ForgetExpired(cutoff time.Time) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var gone []string
	for id, r := range l.records {
		if r.Proposal.Expires.Before(cutoff) {
			delete(l.records, id)
			gone = append(gone, id)
		}
	}
	slices.Sort(gone)
	return gone
}

// LedgerState is the serialisable state of a Ledger.
type LedgerState struct {
	Officers OfficerSet    `json:"officers"`
	Options  LedgerOptions `json:"options"`
	Records  []Record      `json:"records"`
}

// Snapshot returns the ledger's state, records sorted by proposal ID.
// Record returns a copy of the record of proposal id, without copying the
// rest of the ledger.
func (l *Ledger) Record(id string) (Record, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.records[id]
	if !ok {
		return Record{}, false
	}
	return cloneRecord(r), true
}

// cloneRecord deep-copies a record.
func cloneRecord(r *Record) Record {
	c := *r
	if r.canon != nil {
		p, err := ParseCanonical(r.canon)
		if err != nil {
			panic("quorum: recorded proposal no longer parses: " + err.Error())
		}
		c.Proposal = p
	} else {
		c.Proposal = cloneProposal(r.Proposal)
	}
	c.Approvals = slices.Clone(r.Approvals)
	if r.Veto != nil {
		v := *r.Veto
		c.Veto = &v
	}
	return c
}

func (l *Ledger) Snapshot() LedgerState {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := LedgerState{Officers: l.officers.clone(), Options: l.opts, Records: make([]Record, 0, len(l.records))}
	for _, r := range l.records {
		st.Records = append(st.Records, cloneRecord(r))
	}
	sort.Slice(st.Records, func(i, j int) bool { return st.Records[i].Proposal.ID < st.Records[j].Proposal.ID })
	return st
}

// RestoreLedger rebuilds a Ledger from a Snapshot, re-verifying every
// recorded approval and veto against its proposal's digest, so a tampered
// store cannot manufacture a quorum.
func RestoreLedger(st LedgerState) (*Ledger, error) {
	l, err := NewLedger(st.Officers, st.Options)
	if err != nil {
		return nil, err
	}
	for i, rec := range st.Records {
		path := fmt.Sprintf("records[%d]", i)
		d, err := rec.Proposal.Digest()
		if err != nil {
			return nil, fmt.Errorf("%w: %s.proposal: %w", ErrInvalidState, path, err)
		}
		if _, dup := l.records[rec.Proposal.ID]; dup {
			return nil, fmt.Errorf("%w: %s: duplicate proposal %q", ErrInvalidState, path, rec.Proposal.ID)
		}
		if rec.TimeLock < 0 {
			return nil, fmt.Errorf("%w: %s.time_lock: negative", ErrInvalidState, path)
		}
		if (rec.Widening || !rec.Decided) && rec.TimeLock < l.opts.TimeLock {
			// A lock raised since the proposal was filed applies to it: to
			// every one still undecided (whether it widens is decided against
			// the state in force when it reaches its threshold, and may
			// differ from the prediction made at filing) and to every widening
			// one. A shorter lock than configured could only come from
			// tampering or from a lowered setting; neither may shorten a
			// pending lock.
			rec.TimeLock = l.opts.TimeLock
		}
		if rec.Widening && !rec.Decided && rec.LockedFrom.IsZero() {
			// Written before decisions were recorded: a widening proposal
			// that reached its threshold was locked from that moment.
			if at, ok := reachedAt(rec, st.Officers); ok {
				rec.Decided, rec.LockedFrom = true, at
			}
		}
		seen := map[string]bool{}
		for j, a := range rec.Approvals {
			if seen[a.Officer] {
				return nil, fmt.Errorf("%w: %s.approvals[%d]: duplicate officer", ErrInvalidState, path, j)
			}
			seen[a.Officer] = true
			if err := verify(Officer{Name: a.Officer, PublicKey: a.PublicKey}, approvalDomain, d, a.Signature); err != nil {
				return nil, fmt.Errorf("%w: %s.approvals[%d]: %w", ErrInvalidState, path, j, err)
			}
		}
		if rec.Veto != nil {
			if err := verify(Officer{Name: rec.Veto.Officer, PublicKey: rec.Veto.PublicKey}, vetoDomain, d, rec.Veto.Signature); err != nil {
				return nil, fmt.Errorf("%w: %s.veto: %w", ErrInvalidState, path, err)
			}
		}
		r := rec
		r.Approvals = slices.Clone(rec.Approvals)
		r.digest = d
		if r.canon == nil {
			r.canon, _ = rec.Proposal.CanonicalBytes() // it has a digest, so it encodes
		}
		l.records[rec.Proposal.ID] = &r
	}
	return l, nil
}

// reachedAt returns when r's approvals by officers of set first reached the
// set's threshold.
func reachedAt(r Record, set OfficerSet) (time.Time, bool) {
	var times []time.Time
	for _, a := range r.Approvals {
		if o, ok := set.Lookup(a.Officer); ok && bytes.Equal(o.PublicKey, a.PublicKey) {
			times = append(times, a.At)
		}
	}
	if set.Threshold < 1 || len(times) < set.Threshold {
		return time.Time{}, false
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	return times[set.Threshold-1], true
}

// String helps in test failures and logs; it names no secrets.
func (s Status) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%d/%d)", s.State, s.Approvals, s.Threshold)
	if !s.Until.IsZero() {
		fmt.Fprintf(&b, " until %s", s.Until.Format(time.RFC3339))
	}
	return b.String()
}

// cloneProposal deep-copies a proposal the ledger already validated.
func cloneProposal(p Proposal) Proposal {
	b, err := p.CanonicalBytes()
	if err != nil {
		panic("quorum: recorded proposal no longer encodes: " + err.Error())
	}
	c, err := ParseCanonical(b)
	if err != nil {
		panic("quorum: recorded proposal no longer parses: " + err.Error())
	}
	return c
}
