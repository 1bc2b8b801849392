// Package auditmark keeps the audit log's high-water mark on the HSM token:
// the newest signed audit checkpoint (record sequence, head hash, store
// revision, time), in one private data object that only a logged-in user
// (the PIN) can read or change. Root on the vault's host can rewrite the
// audit directory and the store, but not this object, so at start custodyd
// compares both with the mark and refuses an audit directory that is empty,
// shorter, rewritten or missing its checkpoints, or a store older than the
// mark (Check).
//
// Invariants:
//
//   - The mark is only ever a checkpoint the audit log has already signed
//     and written: it is fed by the log's anchor sink, which sees a
//     checkpoint after it is in checkpoints.log, so the log is never behind
//     its own mark.
//   - The mark never moves back: a checkpoint older than the one written is
//     ignored.
//   - Writes are coalesced (at most one per Options.Interval; the newest
//     pending checkpoint wins), because a token object write costs a file
//     write and a lock on SoftHSM; Flush writes the last one at shutdown.
//
// A vault on one store (bbolt) keeps one mark. Replicas of one shared store
// (etcd) keep one each, told apart by their replica_id (the name of their audit chain).
package auditmark

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/custodyhq/custody/internal/audit"
)

// Label is the token label of mark objects.
const Label = "custody:audit-mark:v1"

// Format is the Mark.Format this version writes and reads.
const Format = "custody-audit-mark-v1"

// DefaultInterval is the least time between two writes of the mark.
const DefaultInterval = time.Second

// ErrMark reports marks on the token that cannot be read unambiguously (an
// unreadable object, or more than one for this vault).
var ErrMark = errors.New("auditmark: the token's audit mark is unreadable")

// Objects is the token's data-object store (*hsm.Module).
type Objects interface {
	DataObjects(ctx context.Context, label string) ([][]byte, error)
	CreateDataObject(ctx context.Context, label string, value []byte) error
	ReplaceDataObject(ctx context.Context, label string, match func([]byte) bool, value []byte) (bool, error)
}

// Mark is one mark object's content: the checkpoint as the audit log signed
// it (so it verifies under the audit key and serves as an anchor for
// audit.Verify).
type Mark struct {
	Format string `json:"format"`
	// Instance names the replica whose audit log this is (Scope.Instance)
	// on a shared store; empty for a vault on its own store.
	Instance   string           `json:"instance,omitempty"`
	Checkpoint audit.Checkpoint `json:"checkpoint"`
}

// String names the mark's position, for refusals.
func (m Mark) String() string {
	cp := m.Checkpoint
	return fmt.Sprintf("record %d (head %x…), store revision %d, checkpoint of %s", cp.Seq, []byte(cp.Head)[:min(8, len(cp.Head))],
		cp.StoreRevision, cp.Time.UTC().Format(time.RFC3339))
}

func parse(v []byte) (Mark, error) {
	var m Mark
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Mark{}, err
	}
	if m.Format != Format || m.Checkpoint.Seq == 0 {
		return Mark{}, fmt.Errorf("format %q", m.Format)
	}
	return m, nil
}

// Scope says which marks on the token belong to this custodyd.
type Scope struct {
	// Shared is true for a replica of a shared (etcd) store: its mark is
	// the one with its Instance, the replica's name (replica_id), which
	// names its audit chain. Otherwise the token holds one mark.
	Shared   bool
	Instance string
}

func (s Scope) mine(m Mark) bool { return !s.Shared || m.Instance == s.Instance }

func (s Scope) instance() string {
	if s.Shared {
		return s.Instance
	}
	return ""
}

// Read returns this custodyd's mark, or nil when the token holds none (a
// new vault, or one from before marks). Unreadable objects, or more than
// one mark in scope, are ErrMark: only a definite "none" means none.
func Read(ctx context.Context, obj Objects, s Scope) (*Mark, error) {
	vals, err := obj.DataObjects(ctx, Label)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMark, err)
	}
	var found []Mark
	for _, v := range vals {
		m, err := parse(v)
		if err != nil {
			return nil, fmt.Errorf("%w: an object %q does not parse: %v", ErrMark, Label, err)
		}
		if s.mine(m) {
			found = append(found, m)
		}
	}
	switch len(found) {
	case 0:
		return nil, nil
	case 1:
		return &found[0], nil
	}
	return nil, fmt.Errorf("%w: %d marks on the token for this vault; refusing to guess", ErrMark, len(found))
}

// Newest returns, of marks (every replica's, on a shared store), the one
// that recorded the highest store revision, or nil when there is none.
// Replicas of one vault share one store, whose revision only moves forward,
// so every replica's mark bounds it from below: a replica whose own scope
// has no mark (a new audit directory, host name or replica) is still
// compared with it (CheckStore).
func Newest(marks []Mark) *Mark {
	var newest *Mark
	for i, m := range marks {
		if newest == nil || m.Checkpoint.StoreRevision > newest.Checkpoint.StoreRevision {
			newest = &marks[i]
		}
	}
	return newest
}

// All returns every mark on the token (one per replica on a shared store).
// Unreadable objects are ErrMark.
func All(ctx context.Context, obj Objects) ([]Mark, error) {
	vals, err := obj.DataObjects(ctx, Label)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMark, err)
	}
	out := make([]Mark, 0, len(vals))
	for _, v := range vals {
		m, err := parse(v)
		if err != nil {
			return nil, fmt.Errorf("%w: an object %q does not parse: %v", ErrMark, Label, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// CheckStore refuses (ErrBehind) a store older than the revision that mark
// m, of any replica, recorded.
func CheckStore(m *Mark, p Position) error {
	if m == nil || p.StoreRevision >= m.Checkpoint.StoreRevision {
		return nil
	}
	who := "this vault"
	if m.Instance != "" {
		who = "replica " + m.Instance
	}
	return fmt.Errorf("%w: store %s is at revision %d, older than revision %d recorded by the audit mark of %s on the token at %s: "+
		"the store was rolled back or restored from an older copy; refusing to serve", ErrBehind, p.Store, p.StoreRevision,
		m.Checkpoint.StoreRevision, who, m)
}

// Options configure a Writer.
type Options struct {
	Scope    Scope
	Interval time.Duration
	Logger   *slog.Logger
}

// Writer keeps the mark up to date with the audit log's checkpoints. It is
// the log's anchor sink (Anchor, which never waits for the HSM); Run writes
// in the background once Arm has given it the token.
type Writer struct {
	o Options

	mu      sync.Mutex
	obj     Objects
	pending *audit.Checkpoint
	written *audit.Checkpoint
	kick    chan struct{}
	wmu     sync.Mutex // serialises token writes
	writes  uint64
	errs    uint64
	lastErr error
}

// NewWriter returns a Writer that holds checkpoints until Arm.
func NewWriter(o Options) *Writer {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Writer{o: o, kick: make(chan struct{}, 1)}
}

// Anchor implements audit.AnchorSink: cp becomes the mark to write, unless
// a newer one is pending or written.
func (w *Writer) Anchor(_ context.Context, cp audit.Checkpoint) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if (w.written != nil && cp.Seq < w.written.Seq) || (w.pending != nil && cp.Seq < w.pending.Seq) {
		return nil
	}
	c := cp
	w.pending = &c
	select {
	case w.kick <- struct{}{}:
	default:
	}
	return nil
}

// Arm gives the Writer the token, with the mark found there at start (nil
// if none), after Check passed. Checkpoints anchored before Arm are
// written by the next Run or Flush.
func (w *Writer) Arm(obj Objects, current *Mark) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.obj = obj
	if current != nil {
		c := current.Checkpoint
		w.written = &c
	}
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Disarm forgets the token (a start that failed after Arm).
func (w *Writer) Disarm() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.obj, w.written = nil, nil
}

// Run writes pending marks, at most one per Interval, until ctx ends.
func (w *Writer) Run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		}
		err := w.Flush(ctx)
		if err != nil && ctx.Err() == nil {
			w.o.Logger.Warn("auditmark: writing the audit mark to the token failed; retrying", "err", err)
		}
		t.Reset(w.o.Interval)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err != nil {
			select {
			case w.kick <- struct{}{}:
			default:
			}
		}
	}
}

// Flush writes the pending mark now, if there is one and the Writer is
// armed.
func (w *Writer) Flush(ctx context.Context) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	w.mu.Lock()
	obj, cp, prev := w.obj, w.pending, w.written
	w.mu.Unlock()
	if obj == nil || cp == nil {
		return nil
	}
	err := w.write(ctx, obj, *cp, prev != nil)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.errs++
		w.lastErr = err
		return err
	}
	w.writes++
	w.lastErr = nil
	w.written = cp
	if w.pending == cp {
		w.pending = nil
	}
	return nil
}

func (w *Writer) write(ctx context.Context, obj Objects, cp audit.Checkpoint, exists bool) error {
	b, err := json.Marshal(Mark{Format: Format, Instance: w.o.Scope.instance(), Checkpoint: cp})
	if err != nil {
		return err
	}
	match := func(v []byte) bool {
		m, err := parse(v)
		return err == nil && w.o.Scope.mine(m)
	}
	ok, err := obj.ReplaceDataObject(ctx, Label, match, b)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	if exists {
		return fmt.Errorf("%w: the audit mark this custodyd wrote is gone from the token", ErrMark)
	}
	return obj.CreateDataObject(ctx, Label, b)
}

// Status is what the Writer has done, for metrics and status.
type Status struct {
	Written *audit.Checkpoint // newest mark on the token (nil: none yet)
	Writes  uint64
	Errors  uint64
	LastErr error
}

// Status returns the Writer's counters and newest mark.
func (w *Writer) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := Status{Writes: w.writes, Errors: w.errs, LastErr: w.lastErr}
	if w.written != nil {
		c := *w.written
		s.Written = &c
	}
	return s
}

// Tee returns an anchor sink that gives every checkpoint to the Writer and
// then to next (the configured off-box sink), if any.
func Tee(w *Writer, next audit.AnchorSink) audit.AnchorSink {
	if next == nil {
		return w
	}
	return tee{w, next}
}

type tee struct {
	w    *Writer
	next audit.AnchorSink
}

func (t tee) Anchor(ctx context.Context, cp audit.Checkpoint) error {
	_ = t.w.Anchor(ctx, cp)
	return t.next.Anchor(ctx, cp)
}

// Position is where an audit directory and a store stand at start.
type Position struct {
	AuditDir string
	// Head is the audit log's last record (0 for an empty directory).
	Head uint64
	// LatestCheckpoint is the highest validly signed checkpoint in the
	// directory's checkpoints.log (0 if none).
	LatestCheckpoint uint64
	Store            string
	StoreRevision    uint64
}

// ErrBehind: the audit directory or the store is older than the token's
// mark (rolled back, rewritten, trimmed or emptied).
var ErrBehind = errors.New("auditmark: older than the hsm token's audit mark")

// Check compares an audit directory and a store with the token's mark m,
// and returns an error wrapping ErrBehind that names what is missing or
// older, with both positions, or nil. The chain is verified from the
// mark's record to the end with the mark as an anchor (audit.VerifyFrom),
// so a directory whose records were deleted and re-chained, or edited after
// the mark, is refused as well as a short one, and the cost of a start does
// not grow with the age of the log. The mark pins the hashes of the records
// before it; their content is verified by VerifyPrefix, which custodyd runs
// in the background once it serves.
func Check(m *Mark, p Position, pub crypto.PublicKey) error {
	if m == nil {
		return nil
	}
	cp := m.Checkpoint
	var problems []string
	switch {
	case p.Head == 0:
		problems = append(problems, fmt.Sprintf("audit directory %s is empty, but the token's audit mark is at %s: the directory was emptied or replaced", p.AuditDir, m))
	case p.Head < cp.Seq:
		problems = append(problems, fmt.Sprintf("audit directory %s ends at record %d, before the token's audit mark at %s: records were deleted or the directory was restored from an older copy", p.AuditDir, p.Head, m))
	default:
		if _, err := audit.VerifyFrom(p.AuditDir, pub, &cp); err != nil {
			problems = append(problems, fmt.Sprintf("audit directory %s does not verify against the token's audit mark at %s: %v (the log was rewritten)", p.AuditDir, m, err))
		} else if p.LatestCheckpoint < cp.Seq {
			problems = append(problems, fmt.Sprintf("audit directory %s: checkpoints.log holds no signed checkpoint at or after record %d (its newest is at record %d), but the token's audit mark is at %s: checkpoints.log was trimmed or removed", p.AuditDir, cp.Seq, p.LatestCheckpoint, m))
		}
	}
	if p.StoreRevision < cp.StoreRevision {
		problems = append(problems, fmt.Sprintf("store %s is at revision %d, older than revision %d recorded by the token's audit mark at %s: the store was rolled back or restored from an older copy", p.Store, p.StoreRevision, cp.StoreRevision, m))
	}
	if len(problems) == 0 {
		return nil
	}
	msg := problems[0]
	for _, s := range problems[1:] {
		msg += "; " + s
	}
	return fmt.Errorf("%w: %s; refusing to serve", ErrBehind, msg)
}

// VerifyPrefix verifies the records of dir up to and including the mark's,
// the part Check does not re-read, against the mark (audit.VerifyUpTo): an
// edit to an old record that kept the stored hashes is found here. It reads
// nothing after the mark's record, so it may run while the log is open and
// writing. It stops early with ctx's error when ctx is done.
func VerifyPrefix(ctx context.Context, m *Mark, dir string, pub crypto.PublicKey) error {
	if m == nil || m.Checkpoint.Seq == 0 {
		return nil
	}
	if _, err := audit.VerifyUpTo(ctx, dir, pub, &m.Checkpoint); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: audit directory %s does not verify up to the token's audit mark at %s: %v (a record before the mark was edited)", ErrBehind, dir, m, err)
	}
	return nil
}
