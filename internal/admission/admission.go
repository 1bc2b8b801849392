// Package admission decides whether a new request may start: it caps the
// requests each client identity has in flight, so that one client holding
// many slow requests leaves capacity for the others, and it refuses new
// work while the process is short of memory, before the runtime's soft
// memory limit turns into an out-of-memory kill.
//
// Invariants:
//   - An identity never has more than Options.MaxPerIdentity requests
//     between a successful Acquire and its release; a refused Acquire holds
//     nothing.
//   - Every refusal is a *Refusal wrapping ErrInflight or ErrMemory, with a
//     retry hint, and is counted.
//   - Memory is checked before the identity's slot is taken, so a refusal
//     for memory never consumes a slot.
package admission

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Sentinel errors, wrapped by *Refusal.
var (
	// ErrInflight: the identity already has its maximum of requests in flight.
	ErrInflight = errors.New("too many requests in flight for this identity")
	// ErrMemory: the process is short of memory and takes no new work.
	ErrMemory = errors.New("server is short of memory; not taking new requests")
	// ErrInvalidOptions: New was given a cap below 1.
	ErrInvalidOptions = errors.New("admission: invalid options")
)

// Default retry hints.
const (
	// DefaultInflightRetry: a slot frees as soon as one of the identity's
	// requests finishes, typically within milliseconds.
	DefaultInflightRetry = 200 * time.Millisecond
	// DefaultMemoryRetry: recovering memory takes a garbage collection
	// cycle or the end of a burst.
	DefaultMemoryRetry = time.Second
)

// Refusal is why Acquire refused a request.
type Refusal struct {
	// Err is ErrInflight or ErrMemory.
	Err error
	// RetryAfter is when trying again may succeed.
	RetryAfter time.Duration
	// Limit is the identity's in-flight cap (ErrInflight only).
	Limit int
}

func (r *Refusal) Error() string {
	if errors.Is(r.Err, ErrInflight) {
		return fmt.Sprintf("%v (cap %d); retry after %s", r.Err, r.Limit, r.RetryAfter)
	}
	return fmt.Sprintf("%v; retry after %s", r.Err, r.RetryAfter)
}

func (r *Refusal) Unwrap() error { return r.Err }

// Options configure a Limiter.
type Options struct {
	// MaxPerIdentity caps the requests one identity has in flight.
	MaxPerIdentity int
	// InflightRetry is the retry hint of an ErrInflight refusal
	// (default DefaultInflightRetry).
	InflightRetry time.Duration
	// Memory, if set, refuses new requests while it reports pressure.
	Memory *MemoryGuard
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Limiter admits requests.
type Limiter struct {
	max   int
	retry time.Duration
	mem   *MemoryGuard

	mu       sync.Mutex
	inflight map[string]int
	total    int

	inflightGauge prometheus.Gauge
	refusedID     prometheus.Counter
	refusedMem    prometheus.Counter
}

// New returns a Limiter.
func New(o Options) (*Limiter, error) {
	if o.MaxPerIdentity < 1 {
		return nil, ErrInvalidOptions
	}
	if o.InflightRetry <= 0 {
		o.InflightRetry = DefaultInflightRetry
	}
	l := &Limiter{max: o.MaxPerIdentity, retry: o.InflightRetry, mem: o.Memory, inflight: map[string]int{}}
	refusals := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "custody", Name: "inflight_refusals_total",
		Help: "Requests refused before they started: identity (the caller's in-flight cap, RESOURCE_EXHAUSTED) or memory (UNAVAILABLE).",
	}, []string{"reason"})
	l.inflightGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "custody", Name: "inflight_requests",
		Help: "Authenticated requests in flight, all identities together.",
	})
	l.refusedID = refusals.WithLabelValues("identity")
	l.refusedMem = refusals.WithLabelValues("memory")
	if o.Registerer != nil {
		o.Registerer.MustRegister(refusals, l.inflightGauge)
		if o.Memory != nil {
			o.Memory.register(o.Registerer)
		}
	}
	return l, nil
}

// Acquire admits one request of identity, or refuses it with a *Refusal.
// The caller must call release exactly once when the request is over.
func (l *Limiter) Acquire(identity string) (release func(), err error) {
	if l.mem != nil && l.mem.Pressure() {
		l.refusedMem.Inc()
		return nil, &Refusal{Err: ErrMemory, RetryAfter: DefaultMemoryRetry}
	}
	l.mu.Lock()
	n := l.inflight[identity]
	if n >= l.max {
		l.mu.Unlock()
		l.refusedID.Inc()
		return nil, &Refusal{Err: ErrInflight, RetryAfter: l.retry, Limit: l.max}
	}
	l.inflight[identity] = n + 1
	l.total++
	l.mu.Unlock()
	l.inflightGauge.Inc()
	var once sync.Once
	return func() { once.Do(func() { l.release(identity) }) }, nil
}

func (l *Limiter) release(identity string) {
	l.mu.Lock()
	if n := l.inflight[identity] - 1; n > 0 {
		l.inflight[identity] = n
	} else {
		delete(l.inflight, identity)
	}
	l.total--
	l.mu.Unlock()
	l.inflightGauge.Dec()
}

// InFlight returns how many requests identity has in flight.
func (l *Limiter) InFlight(identity string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inflight[identity]
}
