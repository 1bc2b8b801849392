package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/server"
	"github.com/custodyhq/custody/internal/store"
)

// Replicas (several custodyd on one etcd store; docs/operations.md,
// "Running a cluster"). Each replica:
//
//   - follows the store: its key registry and governance apply what the
//     other replicas write as the store's watch delivers it (keys.Follow,
//     governance.Follow), so a key, a grant, a freeze or a proposal made
//     through one replica is in force on all;
//   - campaigns for the scheduler election; the one leader runs scheduled
//     work (time-locks that mature, key destruction after its waiting
//     period) with every write fenced by its leadership, and a replica that
//     takes over after the leader died continues it;
//   - keeps its own audit chain, every record and checkpoint naming its
//     replica_id, and publishes each signed checkpoint to the store
//     (CheckpointPrefix + replica_id), where `custodyctl audit verify`
//     finds the newest checkpoint of every replica's chain.
//
// On a bbolt store there is one process: the election is won at once and
// nothing is followed.

// SchedulerElection is the election of the replica that runs scheduled work.
const SchedulerElection = "scheduler"

// CheckpointPrefix is where replicas publish their newest signed audit
// checkpoint in the store, one record per replica id. The records are not
// anchored (publishing one must not move the store revision that the next
// checkpoint records); they need not be: each is signed by the HSM audit
// key, so the store can only withhold or roll one back, which the
// replica's own checkpoints.log and any off-box anchor still catch.
const CheckpointPrefix = audit.PublishedPrefix

// unanchored are the store keys kept out of the store's anchor.
func unanchored(key string) bool {
	return server.IsStoredDataKey(key) || strings.HasPrefix(key, CheckpointPrefix)
}

// replicaState is what a replica runs beside serving.
type replicaState struct {
	leader atomic.Bool
}

// startReplica starts following the store (shared stores only) and the
// scheduler. Called once complete has everything open.
func (d *Daemon) startReplica(reg prometheus.Registerer) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "custody", Subsystem: "scheduler", Name: "leader",
		Help: "1 while this replica is the one elected to run scheduled work (time-locks, key destruction), else 0.",
	}, func() float64 {
		if d.replica.leader.Load() {
			return 1
		}
		return 0
	}))
	if store.IsShared(d.Store) {
		d.wg.Add(2)
		go func() {
			defer d.wg.Done()
			d.Keys.Follow(d.runCtx, func(err error) {
				d.log.Warn("following key changes of other replicas: re-reading the keys", "err", err)
			})
		}()
		go func() {
			defer d.wg.Done()
			d.Gov.Follow(d.runCtx, func(err error) {
				d.log.Warn("following governance changes of other replicas: re-reading the state", "err", err)
			})
		}()
	}
	d.wg.Add(1)
	go func() { defer d.wg.Done(); d.schedulerLoop(d.runCtx) }()
}

// schedulerLoop campaigns for the scheduler election and, while this
// replica leads, runs scheduled work through its leadership.
func (d *Daemon) schedulerLoop(ctx context.Context) {
	el, ok := store.ElectorOf(d.Store)
	if !ok {
		d.log.Error("the store cannot elect the replica that runs scheduled work; time-locks and key destruction will not run")
		return
	}
	wait := time.Second
	for ctx.Err() == nil {
		lead, err := el.Campaign(ctx, SchedulerElection, d.cfg.ReplicaID)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.log.Warn("scheduler election failed; trying again", "err", err, "in", wait)
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return
			}
			wait = min(2*wait, 30*time.Second)
			continue
		}
		wait = time.Second
		d.replica.leader.Store(true)
		if store.IsShared(d.Store) {
			d.log.Info("this replica now runs scheduled work (time-locks, key destruction)", "replica", d.cfg.ReplicaID)
		}
		d.runScheduled(ctx, lead)
		d.replica.leader.Store(false)
		if ctx.Err() != nil {
			// Hand over at once rather than after the lease expires.
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = lead.Resign(rctx)
			cancel()
			return
		}
		d.log.Warn("this replica no longer runs scheduled work (its leadership ended); campaigning again", "replica", d.cfg.ReplicaID)
	}
}

// runScheduled runs scheduled work until the leadership or ctx ends.
func (d *Daemon) runScheduled(ctx context.Context, lead store.Leadership) {
	every := d.opts.GovernanceInterval
	if every <= 0 {
		every = defaultGovernanceInterval
	}
	gov := time.NewTicker(every)
	defer gov.Stop()
	destroy := time.NewTicker(d.opts.DestroyCheckInterval)
	defer destroy.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-lead.Done():
			return
		case <-gov.C:
			if n, err := d.Gov.ExecuteReadyVia(ctx, lead); err != nil {
				d.log.Error("executing ready proposals failed", "err", err)
			} else if n > 0 {
				d.log.Info("executed proposals after their time-lock", "count", n)
			}
		case <-destroy.C:
			if n, err := d.Keys.DestroyDueVia(ctx, lead); err != nil {
				d.log.Error("scheduled key destruction failed", "err", err)
			} else if n > 0 {
				d.log.Info("destroyed key versions", "count", n)
			}
		}
	}
}

// checkpointSink publishes every signed checkpoint of this replica's chain
// to the store (shared stores only), beside the configured sink.
type checkpointSink struct {
	d    *Daemon
	next audit.AnchorSink // the configured sink, or nil
}

// Anchor implements audit.AnchorSink.
func (s *checkpointSink) Anchor(ctx context.Context, cp audit.Checkpoint) error {
	var errs []error
	if s.next != nil {
		errs = append(errs, s.next.Anchor(ctx, cp))
	}
	if st := s.d.anchor.Load(); st != nil && store.IsShared(st) {
		errs = append(errs, PublishCheckpoint(ctx, st, s.d.cfg.ReplicaID, cp))
	}
	return errors.Join(errs...)
}

// PublishCheckpoint writes cp as replica's newest checkpoint in st, unless
// a newer one is there already.
func PublishCheckpoint(ctx context.Context, st store.Store, replica string, cp audit.Checkpoint) error {
	b, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	err = store.Update(ctx, st, CheckpointPrefix+replica, func(old []byte) ([]byte, error) {
		var prev audit.Checkpoint
		if old != nil && json.Unmarshal(old, &prev) == nil && prev.Seq > cp.Seq {
			return old, nil
		}
		return b, nil
	})
	if err != nil {
		return fmt.Errorf("publish checkpoint %d of replica %s: %w", cp.Seq, replica, err)
	}
	return nil
}

// PublishedCheckpoints reads every replica's newest published checkpoint
// from a store's raw records (no HSM needed: each is signed by the audit
// key, which is what a verifier checks).
func PublishedCheckpoints(ctx context.Context, raw store.Store) ([]audit.Checkpoint, error) {
	kvs, err := raw.List(ctx, CheckpointPrefix, "", 0)
	if err != nil {
		return nil, err
	}
	out := make([]audit.Checkpoint, 0, len(kvs))
	for _, kv := range kvs {
		var cp audit.Checkpoint
		v, err := unverifiedValue(kv.Value)
		if err == nil {
			err = json.Unmarshal(v, &cp)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: published checkpoint %s: %v", store.ErrCorrupt, kv.Key, err)
		}
		out = append(out, cp)
	}
	return out, nil
}
