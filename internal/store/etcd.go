package store

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The etcd backend keeps one vault under one key prefix P of a cluster that
// may hold other data (other vaults, other applications):
//
//	P + "kv/" + key   -> 8-byte big-endian vault revision || value
//	P + "rev"         -> 8-byte big-endian vault revision (the counter)
//	P + "x/election/" -> election keys (see EtcdElector), bound to leases
//
// What Revision means here. etcd's own revision is cluster-wide: any write
// under any prefix advances it, so it cannot be the store revision of one
// vault. The vault revision is instead the counter at P+"rev": every
// transaction that changes something in the vault also writes the counter,
// guarded by a compare on the counter's etcd mod revision, so vault
// transactions are serialised and the counter advances by exactly one per
// committed transaction, as on bbolt. A key's Revision is the counter value
// of the transaction that last put it, stored beside the value. Nothing
// else in the cluster changes these numbers; they survive etcd compaction,
// snapshot restore and member replacement; they are not etcd revisions and
// must never be compared with one.
//
// A transaction therefore costs a linearizable read (skipped when nothing
// has to be read and the counter is cached) and one etcd transaction; a
// lost race on the counter is retried with the fresh state returned in the
// same round trip. Conditions are evaluated client-side against a state
// read at one etcd revision, and the commit only applies if no vault
// transaction committed since that read, which makes the check atomic.
const (
	etcdKVDir    = "kv/"
	etcdRevKey   = "rev"
	etcdElectDir = "x/election/"
	// etcdReadChunk keeps every read transaction within etcd's default
	// --max-txn-ops (128).
	etcdReadChunk = 128
	// etcdListPage bounds one range response while listing.
	etcdListPage = 512
	// etcdTxnAttempts bounds how often a transaction is retried after losing
	// the race on the vault counter to other writers.
	etcdTxnAttempts = 256
)

// Defaults for EtcdOptions.
const (
	DefaultEtcdDialTimeout    = 5 * time.Second
	DefaultEtcdRequestTimeout = 5 * time.Second
	DefaultEtcdPrefix         = "/custody/"
	DefaultEtcdLeaseTTL       = 10 * time.Second
)

// EtcdOptions configures OpenEtcd.
type EtcdOptions struct {
	// Endpoints are the etcd client URLs ("https://10.0.0.1:2379"). Required.
	Endpoints []string
	// TLS is the client TLS configuration: the CA that issued the etcd
	// members' certificates and this replica's client certificate. Required:
	// the store never talks to etcd in the clear.
	TLS *tls.Config
	// Prefix is this vault's key prefix; it must start and end with "/".
	// Empty means DefaultEtcdPrefix.
	Prefix string
	// DialTimeout bounds the first connection at OpenEtcd. Zero means
	// DefaultEtcdDialTimeout.
	DialTimeout time.Duration
	// RequestTimeout bounds each etcd call when the caller's context has no
	// earlier deadline, so that an unreachable cluster fails calls with
	// ErrUnavailable instead of blocking them. Zero means
	// DefaultEtcdRequestTimeout.
	RequestTimeout time.Duration
	// LeaseTTL is the lease of an election campaign: how long a dead
	// leader's leadership outlives it. Zero means DefaultEtcdLeaseTTL.
	LeaseTTL time.Duration
	// WatchBuffer is how many undelivered events a watcher may hold before
	// it is ended with ErrWatchLagged. Zero means DefaultWatchBuffer.
	WatchBuffer int
}

// Etcd is the cluster Store backend: one vault under one prefix of an etcd
// v3 cluster, shared by every replica that opens the same prefix.
type Etcd struct {
	cli        *clientv3.Client
	prefix     string
	endpoints  string
	reqTimeout time.Duration
	leaseTTL   time.Duration
	watchBuf   int
	closed     atomic.Bool

	// cache is the vault counter and its etcd mod revision as last seen;
	// a transaction with nothing to read commits against it directly.
	cacheMu sync.Mutex
	cache   etcdCounter

	// wsem admits one transaction of this process at a time. Writers of one
	// replica would otherwise race each other for the vault counter, and
	// every lost race costs a round trip: queueing them locally leaves only
	// other replicas to race with, and keeps the cached counter fresh so a
	// plain put commits in one round trip.
	wsem chan struct{}

	wmu      sync.Mutex
	watchers map[*watcher]struct{}

	elect electState
}

var _ Store = (*Etcd)(nil)

type etcdCounter struct {
	valid  bool
	rev    int64 // vault revision
	modRev int64 // etcd mod revision of the counter key (0: absent)
}

// OpenEtcd connects to the cluster and checks, within opts.DialTimeout, that
// it answers a linearizable read of the vault counter.
func OpenEtcd(ctx context.Context, opts EtcdOptions) (*Etcd, error) {
	if len(opts.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: etcd: no endpoints", ErrInvalid)
	}
	if opts.TLS == nil {
		return nil, fmt.Errorf("%w: etcd: TLS is required", ErrInvalid)
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultEtcdPrefix
	}
	if !strings.HasPrefix(opts.Prefix, "/") || !strings.HasSuffix(opts.Prefix, "/") || len(opts.Prefix) < 2 {
		return nil, fmt.Errorf("%w: etcd prefix %q must start and end with / and not be /", ErrInvalid, opts.Prefix)
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultEtcdDialTimeout
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultEtcdRequestTimeout
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = DefaultEtcdLeaseTTL
	}
	if opts.WatchBuffer <= 0 {
		opts.WatchBuffer = DefaultWatchBuffer
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   opts.Endpoints,
		TLS:         opts.TLS.Clone(),
		DialTimeout: opts.DialTimeout,
		// Notice a silently dead connection (partition) in about 13s, not
		// at the kernel's TCP timeout, so that calls move to another member
		// (10s is gRPC's floor for client keepalive pings).
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Logger:               zap.NewNop(),
		Context:              context.WithoutCancel(ctx),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: etcd %s: %w", ErrUnavailable, strings.Join(opts.Endpoints, ","), err)
	}
	e := &Etcd{
		cli:        cli,
		prefix:     opts.Prefix,
		endpoints:  strings.Join(opts.Endpoints, ","),
		reqTimeout: opts.RequestTimeout,
		leaseTTL:   opts.LeaseTTL,
		watchBuf:   opts.WatchBuffer,
		watchers:   make(map[*watcher]struct{}),
		wsem:       make(chan struct{}, 1),
	}
	dctx, cancel := context.WithTimeout(ctx, opts.DialTimeout)
	defer cancel()
	if _, err := e.Revision(dctx); err != nil {
		cli.Close()
		if ctx.Err() == nil && dctx.Err() != nil {
			return nil, fmt.Errorf("%w: etcd %s did not answer within %v", ErrUnavailable, e.endpoints, opts.DialTimeout)
		}
		return nil, err
	}
	return e, nil
}

// Prefix returns the vault's key prefix in the cluster.
func (e *Etcd) Prefix() string { return e.prefix }

// Client returns the etcd client (tests and tools; never write under the
// vault prefix with it).
func (e *Etcd) Client() *clientv3.Client { return e.cli }

func (e *Etcd) kvKey(key string) string { return e.prefix + etcdKVDir + key }
func (e *Etcd) revKey() string          { return e.prefix + etcdRevKey }

// call runs fn with the request timeout applied and maps its error.
func (e *Etcd) call(ctx context.Context, what string, fn func(ctx context.Context) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if e.closed.Load() {
		return ErrClosed
	}
	rctx, cancel := context.WithTimeout(ctx, e.reqTimeout)
	defer cancel()
	err := fn(rctx)
	if err == nil {
		return nil
	}
	return e.mapErr(ctx, what, err)
}

// mapErr turns an etcd client error into the store's sentinels: the
// caller's own cancellation stays a context error, a closed store is
// ErrClosed, anything that says the cluster cannot answer is ErrUnavailable.
func (e *Etcd) mapErr(ctx context.Context, what string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if e.closed.Load() || errors.Is(err, context.Canceled) && e.cli.Ctx().Err() != nil {
		return ErrClosed
	}
	// The cause is kept as text only: the request timeout expiring is the
	// cluster's failure, not the caller's deadline (context.DeadlineExceeded
	// would read as that).
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, rpctypes.ErrTimeout),
		errors.Is(err, rpctypes.ErrNoLeader), errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail),
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost), errors.Is(err, rpctypes.ErrLeaderChanged):
		return fmt.Errorf("%w: etcd %s: %s: %v", ErrUnavailable, e.endpoints, what, err)
	}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			return fmt.Errorf("%w: etcd %s: %s: %v", ErrUnavailable, e.endpoints, what, err)
		}
	}
	return fmt.Errorf("store: etcd %s: %s: %w", e.endpoints, what, err)
}

// decodeEtcd splits a stored record into vault revision and value.
func decodeEtcd(key string, rec []byte) (KV, error) {
	if len(rec) < revLen {
		return KV{}, fmt.Errorf("%w: record %q is %d bytes", ErrCorrupt, key, len(rec))
	}
	rev := int64(binary.BigEndian.Uint64(rec))
	if rev <= 0 {
		return KV{}, fmt.Errorf("%w: record %q has revision %d", ErrCorrupt, key, rev)
	}
	return KV{Key: key, Value: append(make([]byte, 0, len(rec)-revLen), rec[revLen:]...), Revision: rev}, nil
}

func encodeRev(rev int64) []byte {
	var b [revLen]byte
	binary.BigEndian.PutUint64(b[:], uint64(rev))
	return b[:]
}

func decodeCounter(kvs []*mvccpb.KeyValue) (etcdCounter, error) {
	if len(kvs) == 0 {
		return etcdCounter{valid: true}, nil
	}
	if len(kvs[0].Value) != revLen {
		return etcdCounter{}, fmt.Errorf("%w: vault revision is %d bytes", ErrCorrupt, len(kvs[0].Value))
	}
	return etcdCounter{valid: true, rev: int64(binary.BigEndian.Uint64(kvs[0].Value)), modRev: kvs[0].ModRevision}, nil
}

// Get implements Store. The read is linearizable.
func (e *Etcd) Get(ctx context.Context, key string) (KV, error) {
	if err := checkKey(key); err != nil {
		return KV{}, err
	}
	var kv KV
	err := e.call(ctx, "get", func(ctx context.Context) error {
		resp, err := e.cli.Get(ctx, e.kvKey(key))
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return errNotFoundEtcd
		}
		kv, err = decodeEtcd(key, resp.Kvs[0].Value)
		return err
	})
	if errors.Is(err, errNotFoundEtcd) {
		return KV{}, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	if errors.Is(err, ErrCorrupt) {
		return KV{}, errors.Unwrap(err) // keep ErrCorrupt's message, drop the etcd wrapping
	}
	return kv, err
}

var errNotFoundEtcd = errors.New("not found")

// List implements Store. Pages are read at one etcd revision, so a list is
// one consistent view even when it spans several range requests.
func (e *Etcd) List(ctx context.Context, prefix, startAfter string, limit int) ([]KV, error) {
	base := e.prefix + etcdKVDir
	start := base + prefix
	if startAfter >= prefix {
		start = base + startAfter + "\x00"
	}
	end := clientv3.GetPrefixRangeEnd(base + prefix)
	var out []KV
	err := e.call(ctx, "list", func(ctx context.Context) error {
		var atRev int64
		for start < end {
			page := int64(etcdListPage)
			if limit > 0 && int64(limit-len(out)) < page {
				page = int64(limit - len(out))
			}
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
			if atRev > 0 {
				opts = append(opts, clientv3.WithRev(atRev))
			}
			resp, err := e.cli.Get(ctx, start, opts...)
			if err != nil {
				return err
			}
			atRev = resp.Header.Revision
			for _, kv := range resp.Kvs {
				d, err := decodeEtcd(strings.TrimPrefix(string(kv.Key), base), kv.Value)
				if err != nil {
					return err
				}
				out = append(out, d)
			}
			if !resp.More || len(resp.Kvs) == 0 || (limit > 0 && len(out) >= limit) {
				return nil
			}
			start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			return nil, errors.Unwrap(err)
		}
		return nil, err
	}
	return out, nil
}

// Revision implements Store: the vault revision (see the comment at the
// top of this file), read linearizably.
// Shared reports that replicas share this store: its identity names the
// etcd cluster (its cluster ID, from a linearizable read) and the vault's
// prefix. It is what replicas of one vault have in common, not a secret.
func (e *Etcd) Shared(ctx context.Context) (string, error) {
	var id uint64
	err := e.call(ctx, "identity", func(ctx context.Context) error {
		resp, err := e.cli.Get(ctx, e.revKey())
		if err != nil {
			return err
		}
		id = resp.Header.ClusterId
		return nil
	})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("etcd:%016x:%s", id, e.prefix), nil
}

func (e *Etcd) Revision(ctx context.Context) (int64, error) {
	var c etcdCounter
	err := e.call(ctx, "revision", func(ctx context.Context) error {
		resp, err := e.cli.Get(ctx, e.revKey())
		if err != nil {
			return err
		}
		c, err = decodeCounter(resp.Kvs)
		return err
	})
	if err != nil {
		return 0, err
	}
	e.remember(c)
	return c.rev, nil
}

func (e *Etcd) remember(c etcdCounter) {
	e.cacheMu.Lock()
	defer e.cacheMu.Unlock()
	// Keep the newer of two observations (concurrent callers).
	if !e.cache.valid || c.modRev >= e.cache.modRev {
		e.cache = c
	}
}

func (e *Etcd) cached() etcdCounter {
	e.cacheMu.Lock()
	defer e.cacheMu.Unlock()
	return e.cache
}

// etcdState is what a transaction decides on: the vault counter and the
// current records of the keys its conditions and deletes name, all read at
// one etcd revision.
type etcdState struct {
	counter etcdCounter
	keys    map[string]etcdRecord
	// fenceOK is false when a leadership fence no longer holds.
	fenceOK bool
}

type etcdRecord struct {
	exists bool
	value  []byte
	rev    int64
}

// readState reads the counter, the fence key (if any) and keys at one etcd
// revision: the first request is a linearizable read that fixes the
// revision, further chunks read at that revision. Each request stays within
// etcd's default --max-txn-ops.
func (e *Etcd) readState(ctx context.Context, keys []string, fence *etcdFence) (etcdState, error) {
	st := etcdState{keys: make(map[string]etcdRecord, len(keys)), fenceOK: true}
	err := e.call(ctx, "read", func(ctx context.Context) error {
		var atRev int64
		for i := 0; i == 0 || i < len(keys); {
			var ops []clientv3.Op
			var opts []clientv3.OpOption
			if atRev > 0 {
				opts = append(opts, clientv3.WithRev(atRev))
			} else {
				ops = append(ops, clientv3.OpGet(e.revKey()))
				if fence != nil {
					ops = append(ops, clientv3.OpGet(fence.key))
				}
			}
			n := min(etcdReadChunk-len(ops), len(keys)-i)
			chunk := keys[i : i+n]
			for _, k := range chunk {
				ops = append(ops, clientv3.OpGet(e.kvKey(k), opts...))
			}
			resp, err := e.cli.Txn(ctx).Then(ops...).Commit()
			if err != nil {
				return err
			}
			rs := resp.Responses
			if atRev == 0 {
				atRev = resp.Header.Revision
				if st.counter, err = decodeCounter(rs[0].GetResponseRange().GetKvs()); err != nil {
					return err
				}
				rs = rs[1:]
				if fence != nil {
					kvs := rs[0].GetResponseRange().GetKvs()
					st.fenceOK = len(kvs) == 1 && kvs[0].CreateRevision == fence.createRev
					rs = rs[1:]
				}
			}
			if len(rs) != len(chunk) {
				return fmt.Errorf("%w: read %d of %d keys", ErrCorrupt, len(rs), len(chunk))
			}
			for j, k := range chunk {
				kvs := rs[j].GetResponseRange().GetKvs()
				if len(kvs) == 0 {
					st.keys[k] = etcdRecord{}
					continue
				}
				d, err := decodeEtcd(k, kvs[0].Value)
				if err != nil {
					return err
				}
				st.keys[k] = etcdRecord{exists: true, value: d.Value, rev: d.Revision}
			}
			i += n
			if len(keys) == 0 {
				break
			}
		}
		return nil
	})
	return st, err
}

// etcdFence restricts a transaction to a live leadership: the leader key
// must still exist with the create revision it had when it was won.
type etcdFence struct {
	key       string
	createRev int64
}

// Txn implements Store.
func (e *Etcd) Txn(ctx context.Context, conds []Cond, ops []Op) error {
	_, err := e.txn(ctx, conds, ops, nil)
	return err
}

// TxnRev implements RevTxner: Txn, reporting the vault revision it
// committed at.
func (e *Etcd) TxnRev(ctx context.Context, conds []Cond, ops []Op) (int64, error) {
	return e.txn(ctx, conds, ops, nil)
}

func (e *Etcd) txn(ctx context.Context, conds []Cond, ops []Op, fence *etcdFence) (int64, error) {
	if err := checkTxn(conds, ops); err != nil {
		return 0, err
	}
	if err := e.lock(ctx); err != nil {
		return 0, err
	}
	defer e.unlock()
	return e.txnLocked(ctx, conds, ops, fence)
}

// lock takes the process-wide write turn (see wsem).
func (e *Etcd) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if e.closed.Load() {
		return ErrClosed
	}
	select {
	case e.wsem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (e *Etcd) unlock() { <-e.wsem }

// update implements updater: the read, fn and the conditional write run in
// this process's write turn, so only other replicas can make it retry.
func (e *Etcd) update(ctx context.Context, key string, fn func(old []byte) ([]byte, error)) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if err := e.lock(ctx); err != nil {
		return err
	}
	defer e.unlock()
	for attempt := range UpdateAttempts {
		var old []byte
		var rev int64
		kv, err := e.Get(ctx, key)
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
		_, err = e.txnLocked(ctx, []Cond{RevisionIs(key, rev)}, []Op{PutOp(key, value)}, nil)
		if !errors.Is(err, ErrConflict) {
			return err
		}
		if err := backoff(ctx, attempt); err != nil {
			return err
		}
	}
	return fmt.Errorf("store: update %q: lost %d races to other replicas: %w", key, UpdateAttempts, ErrConflict)
}

// txnLocked is txn for a caller holding the write turn.
func (e *Etcd) txnLocked(ctx context.Context, conds []Cond, ops []Op, fence *etcdFence) (int64, error) {
	if err := checkTxn(conds, ops); err != nil {
		return 0, err
	}
	// Keys whose state decides the outcome: condition keys, and deleted
	// keys (deleting an absent key must not advance the revision).
	seen := map[string]bool{}
	var keys []string
	for _, c := range conds {
		if !seen[c.Key] {
			seen[c.Key] = true
			keys = append(keys, c.Key)
		}
	}
	for _, op := range ops {
		if op.Type == OpDelete && !seen[op.Key] {
			seen[op.Key] = true
			keys = append(keys, op.Key)
		}
	}
	var st etcdState
	if c := e.cached(); c.valid && len(keys) == 0 && fence == nil {
		st = etcdState{counter: c, fenceOK: true}
	} else {
		var err error
		if st, err = e.readState(ctx, keys, fence); err != nil {
			return 0, err
		}
	}

	for attempt := range etcdTxnAttempts {
		if !st.fenceOK {
			return 0, ErrNotLeader
		}
		for _, c := range conds {
			r := st.keys[c.Key]
			if !condHolds(c, r.exists, r.value, r.rev) {
				return 0, fmt.Errorf("%w: %s condition on %q", ErrConflict, condName(c.Type), c.Key)
			}
		}
		next := st.counter.rev + 1
		var writes []clientv3.Op
		for _, op := range ops {
			switch op.Type {
			case OpPut:
				rec := make([]byte, revLen+len(op.Value))
				copy(rec, encodeRev(next))
				copy(rec[revLen:], op.Value)
				writes = append(writes, clientv3.OpPut(e.kvKey(op.Key), string(rec)))
			case OpDelete:
				if st.keys[op.Key].exists {
					writes = append(writes, clientv3.OpDelete(e.kvKey(op.Key)))
				}
			}
		}
		if len(writes) == 0 {
			return 0, nil // conditions held at one linearizable read; nothing to change
		}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(e.revKey()), "=", st.counter.modRev)}
		if fence != nil {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(fence.key), "=", fence.createRev))
		}
		then := append(writes, clientv3.OpPut(e.revKey(), string(encodeRev(next))))
		var resp *clientv3.TxnResponse
		err := e.call(ctx, "txn", func(ctx context.Context) error {
			var err error
			resp, err = e.cli.Txn(ctx).If(cmps...).Then(then...).Commit()
			return err
		})
		if err != nil {
			// A timed-out commit may have been applied: forget the counter.
			e.cacheMu.Lock()
			e.cache = etcdCounter{}
			e.cacheMu.Unlock()
			return 0, err
		}
		if resp.Succeeded {
			e.remember(etcdCounter{valid: true, rev: next, modRev: resp.Header.Revision})
			return next, nil
		}
		// Another writer committed since our read (or the fence broke):
		// read again and decide again.
		if st, err = e.readState(ctx, keys, fence); err != nil {
			return 0, err
		}
		if attempt > 2 {
			if err := backoff(ctx, attempt-3); err != nil {
				return 0, err
			}
		}
	}
	return 0, fmt.Errorf("%w: etcd %s: transaction lost %d races for the vault counter", ErrUnavailable, e.endpoints, etcdTxnAttempts)
}

// Watch implements Store. It watches from the etcd revision current when
// Watch is called, so it sees exactly the transactions committed after it
// returns. Events of one etcd transaction arrive together; the vault
// revision of a delete is taken from the counter written by the same
// transaction. A watch whose start was compacted away, or that the cluster
// cancels, ends with ErrWatchLagged: re-read (List) and watch again.
func (e *Etcd) Watch(ctx context.Context, prefix string) (<-chan Event, error) {
	var startRev int64
	err := e.call(ctx, "watch", func(ctx context.Context) error {
		resp, err := e.cli.Get(ctx, e.revKey())
		if err != nil {
			return err
		}
		startRev = resp.Header.Revision + 1
		return nil
	})
	if err != nil {
		return nil, err
	}
	return e.watchFrom(ctx, prefix, startRev)
}

// watchFrom watches prefix from etcd revision startRev.
func (e *Etcd) watchFrom(ctx context.Context, prefix string, startRev int64) (<-chan Event, error) {
	w := &watcher{prefix: prefix, stop: make(chan struct{}), ch: make(chan Event, e.watchBuf+1)}
	e.wmu.Lock()
	if e.closed.Load() {
		e.wmu.Unlock()
		return nil, ErrClosed
	}
	e.watchers[w] = struct{}{}
	e.wmu.Unlock()

	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	base := e.prefix + etcdKVDir
	// One range from the watched prefix through the counter key: the
	// counter's event carries the vault revision of each transaction.
	wch := e.cli.Watch(wctx, base+prefix, clientv3.WithRange(e.revKey()+"\x00"), clientv3.WithRev(startRev))
	go func() {
		defer cancel()
		defer func() {
			e.wmu.Lock()
			delete(e.watchers, w)
			e.wmu.Unlock()
		}()
		err := e.pump(wctx, w, wch, base, prefix)
		switch {
		case ctx.Err() != nil:
			w.finish(nil)
		case e.closed.Load():
			w.finish(ErrClosed)
		default:
			w.finish(err)
		}
	}()
	go func() {
		// Stop the etcd watch as soon as the watcher ends (lagged, closed).
		select {
		case <-w.stop:
			cancel()
		case <-wctx.Done():
		}
	}()
	return w.ch, nil
}

// pump forwards etcd watch responses to w until the watch ends, returning
// the error that ended it (nil when ctx ended).
func (e *Etcd) pump(ctx context.Context, w *watcher, wch clientv3.WatchChan, base, prefix string) error {
	revKey := e.revKey()
	var pending []Event
	var pendingRev int64
	flush := func(vaultRev int64) bool {
		for _, ev := range pending {
			ev.KV.Revision = vaultRev
			if !w.send(ev) {
				return false
			}
		}
		pending = pending[:0]
		return true
	}
	for resp := range wch {
		if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
			return fmt.Errorf("%w: etcd compacted revision %d before it was delivered", ErrWatchLagged, resp.CompactRevision)
		}
		if resp.Canceled || resp.Err() != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("%w: etcd watch cancelled: %v", ErrWatchLagged, resp.Err())
		}
		for _, ev := range resp.Events {
			key := string(ev.Kv.Key)
			if len(pending) > 0 && ev.Kv.ModRevision != pendingRev {
				// A transaction's events without its counter write: not
				// written by a Custody store.
				return fmt.Errorf("%w: etcd revision %d changed the vault without its counter", ErrCorrupt, pendingRev)
			}
			if key == revKey {
				if ev.Type != clientv3.EventTypePut {
					return fmt.Errorf("%w: vault counter deleted at etcd revision %d", ErrCorrupt, ev.Kv.ModRevision)
				}
				c, err := decodeCounter([]*mvccpb.KeyValue{ev.Kv})
				if err != nil {
					return err
				}
				if !flush(c.rev) {
					return nil // the watcher ended itself (lagged)
				}
				continue
			}
			if !strings.HasPrefix(key, base+prefix) {
				continue
			}
			out := Event{KV: KV{Key: strings.TrimPrefix(key, base)}}
			if ev.Type == clientv3.EventTypePut {
				d, err := decodeEtcd(out.KV.Key, ev.Kv.Value)
				if err != nil {
					return err
				}
				out.Type, out.KV = OpPut, d
			} else {
				out.Type = OpDelete
			}
			pending = append(pending, out)
			pendingRev = ev.Kv.ModRevision
		}
	}
	if ctx.Err() != nil || e.closed.Load() {
		return nil
	}
	return fmt.Errorf("%w: etcd watch ended", ErrWatchLagged)
}

// Close implements Store. Open watches end with ErrClosed; leaderships
// end (their leases are revoked when the cluster can be reached).
func (e *Etcd) Close() error {
	if !e.closed.CompareAndSwap(false, true) {
		return nil
	}
	e.wmu.Lock()
	for w := range e.watchers {
		w.finish(ErrClosed)
		delete(e.watchers, w)
	}
	e.wmu.Unlock()
	e.closeElections()
	if err := e.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("store: close etcd client: %w", err)
	}
	return nil
}
