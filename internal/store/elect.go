package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ErrNotLeader means a Leadership has ended (resigned, its lease expired or
// was revoked, or the store closed): its fenced transactions change nothing.
var ErrNotLeader = errors.New("store: not the leader")

// Elector is an optional capability of a Store: electing one leader among
// the processes that share it, for scheduled work that must run in one
// place (time-locks, destruction, checkpoints). Find it with ElectorOf.
//
// Leadership can end at any moment without the leader noticing at once (a
// lease expires while the leader is cut off from the cluster). What makes
// two leaders harmless is the fence: Leadership.Txn commits only while the
// leadership is still the current one, so a deposed leader's writes fail
// with ErrNotLeader and change nothing. Work with effects outside the store
// must be guarded by such a fenced write, or be idempotent.
type Elector interface {
	// Campaign blocks until this caller leads the election called name
	// (letters, digits, '-', '_', '.'), or ctx ends. id names the leader
	// (a replica id) for Leader.
	Campaign(ctx context.Context, name, id string) (Leadership, error)
	// Leader returns the id of the current leader of name, or ErrNotFound.
	Leader(ctx context.Context, name string) (string, error)
}

// Leadership is one won election.
type Leadership interface {
	// Done is closed when the leadership ends: Resign, loss of the
	// backing session (etcd: lease expired or revoked), or Close of the store.
	Done() <-chan struct{}
	// Txn is Store.Txn, fenced: it commits only while this leadership is
	// current, and otherwise returns ErrNotLeader and changes nothing.
	Txn(ctx context.Context, conds []Cond, ops []Op) error
	// Resign ends the leadership so that another campaigner may win.
	Resign(ctx context.Context) error
}

// ElectorOf returns s's election capability, looking through Authenticated
// (whose leaderships then seal and verify values as its Txn does).
func ElectorOf(s Store) (Elector, bool) {
	if a, ok := s.(*AuthStore); ok {
		inner, ok := ElectorOf(a.inner)
		if !ok {
			return nil, false
		}
		return &authElector{a: a, inner: inner}, true
	}
	e, ok := s.(Elector)
	return e, ok
}

func checkElectionName(name string) error {
	if name == "" || len(name) > 128 {
		return fmt.Errorf("%w: election name %q", ErrInvalid, name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("%w: election name %q", ErrInvalid, name)
		}
	}
	return nil
}

// --- Authenticated ---

type authElector struct {
	a     *AuthStore
	inner Elector
}

func (ae *authElector) Campaign(ctx context.Context, name, id string) (Leadership, error) {
	l, err := ae.inner.Campaign(ctx, name, id)
	if err != nil {
		return nil, err
	}
	return &authLeadership{a: ae.a, inner: l}, nil
}

func (ae *authElector) Leader(ctx context.Context, name string) (string, error) {
	return ae.inner.Leader(ctx, name)
}

type authLeadership struct {
	a     *AuthStore
	inner Leadership
}

func (l *authLeadership) Done() <-chan struct{}            { return l.inner.Done() }
func (l *authLeadership) Resign(ctx context.Context) error { return l.inner.Resign(ctx) }
func (l *authLeadership) Txn(ctx context.Context, conds []Cond, ops []Op) error {
	_, err := l.TxnRev(ctx, conds, ops)
	return err
}

// TxnRev implements RevTxner.
func (l *authLeadership) TxnRev(ctx context.Context, conds []Cond, ops []Op) (int64, error) {
	return l.a.txn(ctx, conds, ops, revTxn(l.inner))
}

// --- bbolt: one process holds the file, so it is always the only
// candidate; campaigns inside the process take turns. ---

type boltElections struct {
	mu      sync.Mutex
	holders map[string]*boltLeadership
	closed  bool
}

type boltLeadership struct {
	b    *Bolt
	name string
	id   string
	mu   sync.RWMutex // Txn holds it shared; ending takes it exclusively
	done chan struct{}
	over bool
}

// Campaign implements Elector: the store file is locked to this process,
// so the caller leads as soon as no other campaign in the process does.
func (b *Bolt) Campaign(ctx context.Context, name, id string) (Leadership, error) {
	if err := checkElectionName(name); err != nil {
		return nil, err
	}
	for {
		if err := b.check(ctx); err != nil {
			return nil, err
		}
		el := &b.elect
		el.mu.Lock()
		if el.closed {
			el.mu.Unlock()
			return nil, ErrClosed
		}
		if el.holders == nil {
			el.holders = map[string]*boltLeadership{}
		}
		cur := el.holders[name]
		if cur == nil {
			l := &boltLeadership{b: b, name: name, id: id, done: make(chan struct{})}
			el.holders[name] = l
			el.mu.Unlock()
			return l, nil
		}
		el.mu.Unlock()
		select {
		case <-cur.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Leader implements Elector.
func (b *Bolt) Leader(ctx context.Context, name string) (string, error) {
	if err := b.check(ctx); err != nil {
		return "", err
	}
	b.elect.mu.Lock()
	defer b.elect.mu.Unlock()
	if l := b.elect.holders[name]; l != nil {
		return l.id, nil
	}
	return "", fmt.Errorf("%w: no leader of %q", ErrNotFound, name)
}

func (b *Bolt) closeElections() {
	b.elect.mu.Lock()
	b.elect.closed = true
	ls := make([]*boltLeadership, 0, len(b.elect.holders))
	for _, l := range b.elect.holders {
		ls = append(ls, l)
	}
	b.elect.mu.Unlock()
	for _, l := range ls {
		l.end()
	}
}

func (l *boltLeadership) Done() <-chan struct{} { return l.done }

func (l *boltLeadership) Txn(ctx context.Context, conds []Cond, ops []Op) error {
	_, err := l.TxnRev(ctx, conds, ops)
	return err
}

// TxnRev implements RevTxner.
func (l *boltLeadership) TxnRev(ctx context.Context, conds []Cond, ops []Op) (int64, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.over {
		return 0, ErrNotLeader
	}
	return l.b.TxnRev(ctx, conds, ops)
}

func (l *boltLeadership) Resign(context.Context) error {
	l.end()
	return nil
}

func (l *boltLeadership) end() {
	l.mu.Lock()
	if l.over {
		l.mu.Unlock()
		return
	}
	l.over = true
	close(l.done)
	l.mu.Unlock()
	el := &l.b.elect
	el.mu.Lock()
	if el.holders[l.name] == l {
		delete(el.holders, l.name)
	}
	el.mu.Unlock()
}

// --- etcd: concurrency.Election on a lease per campaign. ---

type electState struct {
	mu    sync.Mutex
	leads map[*etcdLeadership]struct{}
}

type etcdLeadership struct {
	e     *Etcd
	sess  *concurrency.Session
	elect *concurrency.Election
	fence etcdFence
	done  chan struct{}
	once  sync.Once
}

func (e *Etcd) electionPrefix(name string) string { return e.prefix + etcdElectDir + name + "/" }

// Campaign implements Elector. Each campaign holds its own lease of
// EtcdOptions.LeaseTTL, kept alive while the process lives and can reach
// the cluster; when it dies or is cut off, the lease expires within the TTL
// and the next campaigner wins.
func (e *Etcd) Campaign(ctx context.Context, name, id string) (Leadership, error) {
	if err := checkElectionName(name); err != nil {
		return nil, err
	}
	ttl := int64((e.leaseTTL + time.Second - 1) / time.Second)
	var lease *clientv3.LeaseGrantResponse
	if err := e.call(ctx, "grant lease", func(ctx context.Context) error {
		var err error
		lease, err = e.cli.Grant(ctx, ttl)
		return err
	}); err != nil {
		return nil, err
	}
	sess, err := concurrency.NewSession(e.cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(int(ttl)))
	if err != nil {
		e.revoke(lease.ID)
		return nil, e.mapErr(ctx, "session", err)
	}
	el := concurrency.NewElection(sess, e.electionPrefix(name))
	// Campaign waits as long as ctx allows (no request timeout): waiting
	// for the current leader to go is its purpose.
	if err := el.Campaign(ctx, id); err != nil {
		sess.Orphan()
		e.revoke(lease.ID)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, concurrency.ErrElectionNotLeader) || errors.Is(err, concurrency.ErrSessionExpired) {
			return nil, fmt.Errorf("%w: campaign %q: lease expired while waiting", ErrNotLeader, name)
		}
		return nil, e.mapErr(ctx, "campaign", err)
	}
	l := &etcdLeadership{e: e, sess: sess, elect: el, fence: etcdFence{key: el.Key(), createRev: el.Rev()}, done: make(chan struct{})}
	e.elect.mu.Lock()
	if e.closed.Load() {
		e.elect.mu.Unlock()
		sess.Orphan()
		e.revoke(lease.ID)
		return nil, ErrClosed
	}
	if e.elect.leads == nil {
		e.elect.leads = map[*etcdLeadership]struct{}{}
	}
	e.elect.leads[l] = struct{}{}
	e.elect.mu.Unlock()
	go func() {
		select {
		case <-sess.Done():
			l.end()
		case <-l.done:
		}
	}()
	return l, nil
}

// revoke ends a lease, best effort, within the request timeout.
func (e *Etcd) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), e.reqTimeout)
	defer cancel()
	_, _ = e.cli.Revoke(ctx, id)
}

// Leader implements Elector: the campaigner whose key was created first.
func (e *Etcd) Leader(ctx context.Context, name string) (string, error) {
	if err := checkElectionName(name); err != nil {
		return "", err
	}
	var id string
	err := e.call(ctx, "leader", func(ctx context.Context) error {
		resp, err := e.cli.Get(ctx, e.electionPrefix(name), clientv3.WithFirstCreate()...)
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return errNotFoundEtcd
		}
		id = string(resp.Kvs[0].Value)
		return nil
	})
	if errors.Is(err, errNotFoundEtcd) {
		return "", fmt.Errorf("%w: no leader of %q", ErrNotFound, name)
	}
	return id, err
}

func (e *Etcd) closeElections() {
	e.elect.mu.Lock()
	ls := make([]*etcdLeadership, 0, len(e.elect.leads))
	for l := range e.elect.leads {
		ls = append(ls, l)
	}
	e.elect.mu.Unlock()
	for _, l := range ls {
		_ = l.resign(context.Background())
	}
}

func (l *etcdLeadership) Done() <-chan struct{} { return l.done }

func (l *etcdLeadership) Txn(ctx context.Context, conds []Cond, ops []Op) error {
	_, err := l.TxnRev(ctx, conds, ops)
	return err
}

// TxnRev implements RevTxner.
func (l *etcdLeadership) TxnRev(ctx context.Context, conds []Cond, ops []Op) (int64, error) {
	select {
	case <-l.done:
		return 0, ErrNotLeader
	default:
	}
	return l.e.txn(ctx, conds, ops, &l.fence)
}

// Resign implements Leadership: it deletes the leader key and revokes the
// lease, so the next campaigner wins at once rather than after the TTL.
func (l *etcdLeadership) Resign(ctx context.Context) error {
	if l.e.closed.Load() {
		l.end()
		return ErrClosed
	}
	return l.resign(ctx)
}

func (l *etcdLeadership) resign(ctx context.Context) error {
	l.end()
	rctx, cancel := context.WithTimeout(ctx, l.e.reqTimeout)
	defer cancel()
	err := l.elect.Resign(rctx)
	l.sess.Orphan()
	if _, rerr := l.e.cli.Revoke(rctx, l.sess.Lease()); err == nil && rerr != nil && !strings.Contains(rerr.Error(), "lease not found") {
		err = rerr
	}
	if err != nil {
		return l.e.mapErr(ctx, "resign", err)
	}
	return nil
}

func (l *etcdLeadership) end() {
	l.once.Do(func() {
		close(l.done)
		l.e.elect.mu.Lock()
		delete(l.e.elect.leads, l)
		l.e.elect.mu.Unlock()
	})
}
