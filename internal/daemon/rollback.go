package daemon

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/auditmark"
	"github.com/custodyhq/custody/internal/store"
)

// Rollback protection beyond the store's anchor and the audit checkpoints:
// the newest checkpoint is also kept on the HSM token (internal/auditmark),
// where root on the host cannot rewrite it without the PIN, and every start
// compares the audit directory and the store with it before the audit log
// may sign anything or a request is served.

// newMarkWriter makes the token mark's writer.
func newMarkWriter(raw store.Store, replicaID string, log *slog.Logger) *auditmark.Writer {
	return auditmark.NewWriter(auditmark.Options{Scope: markScope(raw, replicaID), Logger: log})
}

// markScope: one mark per vault, or one per replica of a shared store,
// named by its replica_id, the name its audit chain goes by (in every
// record and in its published checkpoints): a replica started on another,
// emptier audit directory under the same name meets its own mark.
func markScope(raw store.Store, replicaID string) auditmark.Scope {
	_, shared := raw.(store.Shared)
	return auditmark.Scope{Shared: shared, Instance: replicaID}
}

// noDataObjectsDetail is what status says on a token without data objects.
const noDataObjectsDetail = "the HSM token keeps no data objects: no audit mark on the token; an older audit directory or store is caught only by the signed checkpoints in the directory and an off-box anchor sink (audit.anchor_file / anchor_url)"

// checkAuditMark compares the audit directory and the store with the
// token's mark and arms the mark's writer; it refuses (naming what is
// missing or older, with both positions) an audit directory that is empty,
// shorter, rewritten or missing its checkpoints, or an older store.
func (d *Daemon) checkAuditMark(ctx context.Context, pub crypto.PublicKey) error {
	if p := d.HSM.Profile(); p != nil && p.NoDataObjects {
		d.markOnToken.Store(false)
		d.log.Warn(noDataObjectsDetail, "profile", p.Name)
		return d.walkWithoutMark(pub)
	}
	mark, err := auditmark.Read(ctx, d.HSM, d.markScope())
	if err != nil {
		return fmt.Errorf("audit mark: %w; refusing to serve", err)
	}
	if mark == nil {
		if err := d.walkWithoutMark(pub); err != nil {
			return err
		}
	}
	seq := d.openedHead
	pos := auditmark.Position{AuditDir: d.cfg.Audit.Dir, Head: seq, Store: d.cfg.Store.String(), StoreRevision: d.Store.Anchor().Revision}
	if cp, ok := d.Audit.LatestCheckpoint(); ok {
		pos.LatestCheckpoint = cp.Seq
	}
	if err := auditmark.Check(mark, pos, pub); err != nil {
		return err
	}
	if d.markScope().Shared {
		// The store is shared: every replica's mark bounds its revision,
		// also for a replica whose own scope has none yet (a new audit
		// directory, host name or replica is no way around the marks).
		marks, err := auditmark.All(ctx, d.HSM)
		if err != nil {
			return fmt.Errorf("audit mark: %w; refusing to serve", err)
		}
		if err := auditmark.CheckStore(auditmark.Newest(marks), pos); err != nil {
			return err
		}
		if err := d.checkPublishedChains(ctx, marks); err != nil {
			return err
		}
	}
	if mark == nil && (seq > 0 || pos.StoreRevision > 0) {
		d.log.Info("no audit mark on the HSM token yet (a new vault, or one from before marks): the first checkpoint makes one")
	}
	d.mark.Arm(d.HSM, mark)
	d.markOnToken.Store(true)
	d.prefixMark = mark
	return nil
}

// verifyAuditPrefix verifies, while custodyd serves, the records before
// the token's mark that checkAuditMark did not re-read (it checks the mark's
// record and everything after it, so that a start does not grow with the
// age of the log). A record found edited condemns the audit log: every
// request fails closed as UNAVAILABLE, nothing more is signed, and
// readiness fails, until an operator restores the directory and restarts.
func (d *Daemon) verifyAuditPrefix(ctx context.Context, pub crypto.PublicKey) {
	m := d.prefixMark
	if m == nil {
		return
	}
	start := time.Now()
	limit := prefixCheckLimit(m.Checkpoint.Seq)
	err := bounded(ctx, limit, func(ctx context.Context) error {
		return auditmark.VerifyPrefix(ctx, m, d.cfg.Audit.Dir, pub)
	})
	switch {
	case err == nil:
		d.log.Info("audit: records before the token's audit mark verified", "through", m.Checkpoint.Seq, "took", time.Since(start).Round(time.Millisecond))
	case ctx.Err() != nil:
	case errors.Is(err, errPrefixCheckTimedOut):
		d.Audit.Condemn(fmt.Errorf("%w: the %d records before the token's audit mark were not verified within %s (a read that does not return, or a directory padded to stall the check)", err, m.Checkpoint.Seq, limit))
	default:
		d.Audit.Condemn(err)
	}
}

// prefixCheckLimit bounds the background check of n records: far above an
// honest disk's pace (about 10 µs a record on a busy 2-core machine), so
// that only a check held up on purpose, or by a failing disk, reaches it.
func prefixCheckLimit(n uint64) time.Duration {
	return 5*time.Minute + time.Duration(n)*100*time.Microsecond
}

// errPrefixCheckTimedOut: the background check did not end in time.
var errPrefixCheckTimedOut = errors.New("audit: background check timed out")

// bounded runs check and returns its error, or errPrefixCheckTimedOut once
// limit has passed without waiting for check to return (a read blocked in
// the kernel does not heed ctx), or ctx's error when ctx ends first; check
// is given a context that ends then too.
func bounded(ctx context.Context, limit time.Duration, check func(context.Context) error) error {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- check(cctx) }()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return errPrefixCheckTimedOut
	case <-ctx.Done():
		return ctx.Err()
	}
}

// checkPublishedChains refuses to serve when a replica whose audit mark is
// among marks (those on the token) has no published checkpoint in the store: root with the
// store's credentials deleted it, so that its chain would drop out of what
// auditors verify the replicas against (audit verify reports a replica
// whose published checkpoint has no directory, not one with neither). The
// marks, on the token, cannot be deleted without the PIN. Marks of the
// older host:directory scope (a ':' in the name, which no replica_id has)
// are not replica names and are passed over.
func (d *Daemon) checkPublishedChains(ctx context.Context, marks []auditmark.Mark) error {
	pubs, err := PublishedCheckpoints(ctx, d.raw)
	if err != nil {
		return fmt.Errorf("published checkpoints: %w; refusing to serve", err)
	}
	published := map[string]bool{}
	for _, cp := range pubs {
		published[cp.InstanceID] = true
	}
	for _, m := range marks {
		if m.Instance == "" || m.Instance == d.cfg.ReplicaID || strings.Contains(m.Instance, ":") || published[m.Instance] {
			continue
		}
		return fmt.Errorf("%w: replica %s has an audit mark on the HSM token at %s, but no published checkpoint in store %s: "+
			"it was deleted, and that replica's audit chain would drop out of what auditors verify; refusing to serve",
			auditmark.ErrBehind, m.Instance, &m, d.cfg.Store.String())
	}
	return nil
}

// anchorNow signs a checkpoint of the current head and store revision and
// writes it to the token's mark before returning (an officer's approval or
// veto is answered only then): a crash right after a governance change and
// an older store put back are refused at the next start.
func (d *Daemon) anchorNow(ctx context.Context) error {
	if !d.markOnToken.Load() {
		return nil
	}
	cp, err := d.Audit.Checkpoint(ctx)
	if errors.Is(err, audit.ErrNoRecords) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := d.mark.Anchor(ctx, cp); err != nil {
		return err
	}
	return d.mark.Flush(ctx)
}

func (d *Daemon) markScope() auditmark.Scope { return markScope(d.raw, d.cfg.ReplicaID) }

// AuditMarkStatus is the token mark's state for the status service.
func (d *Daemon) AuditMarkStatus() *custodyv1.AuditMarkStatus {
	if !d.markOnToken.Load() {
		return &custodyv1.AuditMarkStatus{Detail: noDataObjectsDetail}
	}
	st := d.mark.Status()
	out := &custodyv1.AuditMarkStatus{OnToken: true,
		Detail: "the newest audit checkpoint is kept on the HSM token: an older, shorter, rewritten or emptied audit directory, or an older store, is refused at start"}
	if st.Written != nil {
		out.Seq, out.StoreRevision, out.Time = st.Written.Seq, st.Written.StoreRevision, st.Written.Time.UTC().Format(time.RFC3339)
	}
	if st.LastErr != nil {
		out.Detail += "; the last write failed: " + st.LastErr.Error()
	}
	return out
}

// registerMarkMetrics exports the mark's writes and failures.
func (d *Daemon) registerMarkMetrics(reg prometheus.Registerer) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "custody", Subsystem: "audit", Name: "token_mark_writes_total",
			Help: "Audit checkpoints written to the HSM token as its audit high-water mark.",
		}, func() float64 { return float64(d.mark.Status().Writes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "custody", Subsystem: "audit", Name: "token_mark_errors_total",
			Help: "Failed writes of the audit high-water mark to the HSM token (retried with the next checkpoint).",
		}, func() float64 { return float64(d.mark.Status().Errors) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "custody", Subsystem: "audit", Name: "token_mark",
			Help: "1 when the audit high-water mark is kept on the HSM token, 0 when the token keeps no data objects.",
		}, func() float64 {
			if d.markOnToken.Load() {
				return 1
			}
			return 0
		}),
	)
}

// recordUnattested puts on the record, before anything is signed at this
// start, the records the directory held after its newest signed checkpoint
// (or the token's audit mark, if newer) when custodyd opened it. Records
// are chained but carry no key, so nothing else tells the last moments
// before an unclean stop from records someone with write access to the
// directory appended while custodyd was down: the start-up checkpoint
// signs over them, and this record, under the custodyd identity with
// method audit.unattested, names the span for auditors. A clean stop
// leaves none (its last act is a checkpoint).
func (d *Daemon) recordUnattested(ctx context.Context) error {
	// Nothing is signed before this (the signer is armed after it), so the
	// newest checkpoint is still the one the directory held at open.
	var from uint64
	if cp, ok := d.Audit.LatestCheckpoint(); ok {
		from = cp.Seq
	}
	if m := d.prefixMark; m != nil && m.Checkpoint.Seq > from {
		from = m.Checkpoint.Seq
	}
	if d.openedHead <= from {
		return nil
	}
	rec := audit.Record{Time: d.opts.Now(), Identity: "custodyd", Method: "audit.unattested", Outcome: audit.OutcomeOK, Code: "OK",
		Detail: fmt.Sprintf("records %d to %d were after the newest signed checkpoint (%d) when custodyd started; unclean stop or written by another process", from+1, d.openedHead, from)}
	_, err := d.Audit.Append(context.WithoutCancel(ctx), rec)
	return err
}

// walkWithoutMark verifies, when the token holds no audit mark for this
// log (a new vault, a token without data objects, or a mark root deleted
// from a SoftHSM token directory), the chain from the directory's newest
// signed checkpoint to its end, or the whole chain if it has none: the
// walk a mark would have anchored. It refuses a record edited, forged or
// re-chained under that checkpoint, a record without its store revision
// after ones with it, and a store revision that goes down, so that neither
// the start's store comparison (the last record's revision) nor the span
// named unattested can be fed a forged tail.
func (d *Daemon) walkWithoutMark(pub crypto.PublicKey) error {
	if d.openedHead == 0 {
		return nil
	}
	var from *audit.Checkpoint
	if cp, ok := d.Audit.LatestCheckpoint(); ok {
		from = &cp
	}
	if _, err := audit.VerifyFrom(d.cfg.Audit.Dir, pub, from); err != nil {
		return fmt.Errorf("audit directory %s does not verify from its newest signed checkpoint (the token holds no audit mark for it): %v; refusing to serve",
			d.cfg.Audit.Dir, err)
	}
	return nil
}
