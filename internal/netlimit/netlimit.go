// Package netlimit bounds the connections custodyd's listeners hold, so
// that anyone able to open a socket cannot exhaust the process's file
// descriptors, memory or goroutines.
//
// A Budget is shared by one or more listeners (custodyd: the gRPC and
// gateway ports share one, the metrics/health port has its own). Every
// connection accepted through a Listener is either refused at once or
// counted against the budget until it is closed. A counted connection is
// pending until whoever does its handshake calls Established (gRPC: after
// the TLS handshake; HTTP: at its first request), and established after.
//
// Invariants:
//   - At no time does a Budget count more than Limits.MaxConns connections,
//     more than Limits.MaxPerSource from one source address (an IPv4
//     address, an IPv6 /64), or more than Limits.MaxPending pending ones.
//   - A pending connection is closed once Limits.PendingTimeout has passed
//     since it was accepted, whatever the server above is doing with it.
//   - When the pending set is full (or the budget is, and some connections
//     are pending), a new connection evicts the oldest pending one rather
//     than being refused: idle or slow handshakes cannot lock newcomers out,
//     and a legitimate handshake is lost only if MaxPending newer
//     connections arrive while it runs.
//   - Established connections are never evicted; beyond the caps, new
//     connections are refused (closed with a TCP reset) and counted.
package netlimit

import (
	"container/list"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Reasons a connection is refused or closed early; the values label metrics.
const (
	// RejectMaxConns: the budget's MaxConns connections are all established.
	RejectMaxConns = "max_connections"
	// RejectPerSource: the source address already holds MaxPerSource.
	RejectPerSource = "per_source"
	// RejectOverload: Limits.Admit refused (custodyd: memory pressure).
	RejectOverload = "overload"
	// RejectEvicted: a pending connection closed to make room for a newer one.
	RejectEvicted = "evicted"

	// HandshakeTimeout: a pending connection outlived PendingTimeout.
	HandshakeTimeout = "timeout"
	// HandshakeAborted: a pending connection was closed by either side
	// before it was established (failed TLS handshake, peer hung up).
	HandshakeAborted = "aborted"
)

// ErrInvalidLimits: NewBudget was given limits that cannot hold a connection.
var ErrInvalidLimits = errors.New("netlimit: invalid limits")

// Limits configure a Budget.
type Limits struct {
	// MaxConns caps connections counted at once, pending or established.
	MaxConns int
	// MaxPerSource caps connections from one source address.
	MaxPerSource int
	// MaxPending caps connections not yet established.
	MaxPending int
	// PendingTimeout is how long a connection may stay pending.
	PendingTimeout time.Duration
	// Admit, if set, is asked before each new connection is counted;
	// false refuses it with RejectOverload.
	Admit func() bool
	// Logger receives at most one warning per reason every 10 seconds
	// when connections are refused; nil means slog.Default().
	Logger *slog.Logger
}

// Budget counts the connections of the listeners that share it.
type Budget struct {
	lim     Limits
	metrics *Metrics
	log     *slog.Logger

	mu        sync.Mutex
	total     int
	perSource map[string]int
	pending   list.List // of *Conn, oldest first
	lastWarn  map[string]time.Time
}

// NewBudget returns an empty budget. m may be nil (no metrics).
func NewBudget(l Limits, m *Metrics) (*Budget, error) {
	if l.MaxConns < 1 || l.MaxPerSource < 1 || l.MaxPending < 1 || l.PendingTimeout <= 0 {
		return nil, ErrInvalidLimits
	}
	if l.Logger == nil {
		l.Logger = slog.Default()
	}
	return &Budget{lim: l, metrics: m, log: l.Logger, perSource: map[string]int{}, lastWarn: map[string]time.Time{}}, nil
}

// Limits returns the budget's limits.
func (b *Budget) Limits() Limits { return b.lim }

// Stats is a snapshot of a budget.
type Stats struct {
	Open, Pending int
}

// Stats returns how many connections the budget counts now.
func (b *Budget) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return Stats{Open: b.total, Pending: b.pending.Len()}
}

// Listen wraps inner so that its connections count against b. name labels
// the listener's metrics ("grpc", "gateway", "http").
func (b *Budget) Listen(inner net.Listener, name string) *Listener {
	l := &Listener{Listener: inner, b: b, name: name, m: b.metrics.forListener(name, b.lim.MaxConns)}
	return l
}

// Listener is a net.Listener whose connections count against a Budget.
type Listener struct {
	net.Listener
	b    *Budget
	name string
	m    listenerMetrics
}

// Accept returns the next connection the budget admits. Refused
// connections are closed with a reset and never returned.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c := l.admit(raw); c != nil {
			return c, nil
		}
	}
}

type connState uint8

const (
	statePending connState = iota
	stateEstablished
	stateClosed
)

// Conn is a connection counted against a Budget.
type Conn struct {
	net.Conn
	l     *Listener
	src   string
	state connState     // guarded by l.b.mu
	elem  *list.Element // in b.pending while pending; guarded by l.b.mu
	timer *time.Timer
	once  sync.Once
	est   atomic.Bool // set once established: Establish's lock-free fast path
}

func (l *Listener) admit(raw net.Conn) *Conn {
	b := l.b
	if b.lim.Admit != nil && !b.lim.Admit() {
		l.refuse(raw, RejectOverload)
		return nil
	}
	src := sourceKey(raw.RemoteAddr())
	var evicted *Conn
	b.mu.Lock()
	if b.perSource[src] >= b.lim.MaxPerSource {
		b.mu.Unlock()
		l.refuse(raw, RejectPerSource)
		return nil
	}
	if n := b.pending.Len(); n > 0 && (n >= b.lim.MaxPending || b.total >= b.lim.MaxConns) {
		evicted = b.pending.Front().Value.(*Conn)
		b.detachLocked(evicted)
	}
	if b.total >= b.lim.MaxConns {
		b.mu.Unlock()
		l.refuse(raw, RejectMaxConns)
		return nil
	}
	c := &Conn{Conn: raw, l: l, src: src, state: statePending}
	b.total++
	b.perSource[src]++
	c.elem = b.pending.PushBack(c)
	// Armed under the lock so that Establish always sees the timer.
	c.timer = time.AfterFunc(b.lim.PendingTimeout, c.expire)
	b.mu.Unlock()
	l.m.accepted.Inc()
	l.m.pending.Inc()
	if evicted != nil {
		evicted.l.m.rejected(RejectEvicted).Inc()
		evicted.finish(statePending, "", true)
		b.warn(RejectEvicted, evicted.l.name)
	}
	return c
}

// refuse closes a connection that was never counted.
func (l *Listener) refuse(raw net.Conn, reason string) {
	resetOnClose(raw)
	raw.Close()
	l.m.rejected(reason).Inc()
	l.b.warn(reason, l.name)
}

// warn logs a refusal, at most once per reason every 10 seconds.
func (b *Budget) warn(reason, listener string) {
	now := time.Now()
	b.mu.Lock()
	last := b.lastWarn[reason]
	ok := now.Sub(last) >= 10*time.Second
	if ok {
		b.lastWarn[reason] = now
	}
	b.mu.Unlock()
	if ok {
		b.log.Warn("refusing connections: limit reached (see custody_connections_rejected_total)",
			"reason", reason, "listener", listener, "max_connections", b.lim.MaxConns,
			"max_per_source", b.lim.MaxPerSource, "max_pending", b.lim.MaxPending)
	}
}

// detachLocked removes c from the budget; b.mu is held. It reports the
// state c had.
func (b *Budget) detachLocked(c *Conn) connState {
	prev := c.state
	if prev == stateClosed {
		return prev
	}
	b.total--
	if n := b.perSource[c.src] - 1; n > 0 {
		b.perSource[c.src] = n
	} else {
		delete(b.perSource, c.src)
	}
	if c.elem != nil {
		b.pending.Remove(c.elem)
		c.elem = nil
	}
	c.state = stateClosed
	return prev
}

// Establish marks c established: it no longer counts as pending and is
// never evicted or timed out. It reports false if c was already closed.
func (c *Conn) Establish() bool {
	if c.est.Load() {
		return true
	}
	b := c.l.b
	b.mu.Lock()
	defer b.mu.Unlock()
	switch c.state {
	case stateEstablished:
		return true
	case stateClosed:
		return false
	}
	c.state = stateEstablished
	c.est.Store(true)
	b.pending.Remove(c.elem)
	c.elem = nil
	c.timer.Stop()
	c.l.m.pending.Dec()
	c.l.m.established.Inc()
	return true
}

// expire closes c if it is still pending when PendingTimeout has passed.
func (c *Conn) expire() {
	b := c.l.b
	b.mu.Lock()
	if c.state != statePending {
		b.mu.Unlock()
		return
	}
	b.detachLocked(c)
	b.mu.Unlock()
	c.finish(statePending, HandshakeTimeout, true)
}

// Close closes the connection and returns its place in the budget.
func (c *Conn) Close() error {
	b := c.l.b
	b.mu.Lock()
	prev := b.detachLocked(c)
	b.mu.Unlock()
	return c.finish(prev, HandshakeAborted, false)
}

// finish updates metrics for a connection just detached in state prev
// (stateClosed: detached before) and closes the socket once. A pending
// connection closed for any reason but eviction is a handshake failure.
func (c *Conn) finish(prev connState, failure string, reset bool) error {
	switch prev {
	case statePending:
		c.l.m.pending.Dec()
		if failure != "" {
			c.l.m.handshakeFailure(failure).Inc()
		}
	case stateEstablished:
		c.l.m.established.Dec()
	}
	err := net.ErrClosed
	c.once.Do(func() {
		if c.timer != nil {
			c.timer.Stop()
		}
		if reset {
			resetOnClose(c.Conn)
		}
		err = c.Conn.Close()
	})
	return err
}

// Established marks the budget-counted connection under nc established,
// looking through wrappers that expose NetConn (such as *tls.Conn). It
// reports false if nc is not counted by a Budget or is already closed.
func Established(nc net.Conn) bool {
	for range 8 {
		switch c := nc.(type) {
		case *Conn:
			return c.Establish()
		case interface{ NetConn() net.Conn }:
			nc = c.NetConn()
		default:
			return false
		}
	}
	return false
}

// resetOnClose makes Close send a TCP reset: a refused or expired
// connection leaves no TIME_WAIT state behind on the server.
func resetOnClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
}

// sourceKey is what the per-source cap counts by: the IPv4 address, or the
// IPv6 /64 (one host usually holds a whole /64).
func sourceKey(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.Network() + ":" + a.String()
	}
	if ip4 := ta.IP.To4(); ip4 != nil {
		return ip4.String()
	}
	return ta.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
}
