package netlimit

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the connection metrics of every listener on one registry.
// Labels are bounded: listener (the few names custodyd gives its
// listeners), state (pending, established) and reason (the constants of
// this package).
type Metrics struct {
	open     *prometheus.GaugeVec
	max      *prometheus.GaugeVec
	accepted *prometheus.CounterVec
	rejected *prometheus.CounterVec
	failures *prometheus.CounterVec
}

// NewMetrics registers the connection metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "custody", Name: "connections_open",
			Help: "Client connections open, by listener and state (pending: handshake not finished; established).",
		}, []string{"listener", "state"}),
		max: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "custody", Name: "connections_max",
			Help: "Connection cap of the budget the listener counts against (grpc and gateway share one).",
		}, []string{"listener"}),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "custody", Name: "connections_accepted_total",
			Help: "Connections accepted and counted against the listener's budget.",
		}, []string{"listener"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "custody", Name: "connections_rejected_total",
			Help: "Connections refused at accept (max_connections, per_source, overload) or evicted while pending to make room (evicted).",
		}, []string{"listener", "reason"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "custody", Name: "handshake_failures_total",
			Help: "Connections closed before their handshake finished (HTTP: before their first request): timeout or aborted.",
		}, []string{"listener", "reason"}),
	}
	reg.MustRegister(m.open, m.max, m.accepted, m.rejected, m.failures)
	return m
}

// listenerMetrics are one listener's children of Metrics; all no-ops when
// the budget has no Metrics.
type listenerMetrics struct {
	pending, established prometheus.Gauge
	accepted             prometheus.Counter
	rejectedBy           map[string]prometheus.Counter
	failureBy            map[string]prometheus.Counter
}

var (
	rejectReasons  = []string{RejectMaxConns, RejectPerSource, RejectOverload, RejectEvicted}
	failureReasons = []string{HandshakeTimeout, HandshakeAborted}
)

func (m *Metrics) forListener(name string, maxConns int) listenerMetrics {
	lm := listenerMetrics{rejectedBy: map[string]prometheus.Counter{}, failureBy: map[string]prometheus.Counter{}}
	if m == nil {
		noop := prometheus.NewGauge(prometheus.GaugeOpts{Name: "unused"})
		lm.pending, lm.established = noop, noop
		lm.accepted = prometheus.NewCounter(prometheus.CounterOpts{Name: "unused"})
		for _, r := range rejectReasons {
			lm.rejectedBy[r] = lm.accepted
		}
		for _, r := range failureReasons {
			lm.failureBy[r] = lm.accepted
		}
		return lm
	}
	m.max.WithLabelValues(name).Set(float64(maxConns))
	lm.pending = m.open.WithLabelValues(name, "pending")
	lm.established = m.open.WithLabelValues(name, "established")
	lm.accepted = m.accepted.WithLabelValues(name)
	// Every label value exists from the start, so rate() and alerts see 0
	// rather than nothing before the first refusal.
	for _, r := range rejectReasons {
		lm.rejectedBy[r] = m.rejected.WithLabelValues(name, r)
	}
	for _, r := range failureReasons {
		lm.failureBy[r] = m.failures.WithLabelValues(name, r)
	}
	return lm
}

func (lm listenerMetrics) rejected(reason string) prometheus.Counter { return lm.rejectedBy[reason] }

func (lm listenerMetrics) handshakeFailure(reason string) prometheus.Counter {
	return lm.failureBy[reason]
}
