package sealsvc

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	submissions *prometheus.CounterVec
}

// Outcomes of an unseal submission (the submissions metric's labels).
var submissionOutcomes = []string{"accepted", "not_officer", "bad_share", "replayed", "duplicate", "wrong_target", "error"}

var states = []State{StateAwaitingCeremony, StateSealed, StateUnsealed, StateFenced}

var sources = []string{"officers", "pin_file", "pin_env"}

func newMetrics(reg prometheus.Registerer, s *Service) metrics {
	m := metrics{submissions: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "custody", Subsystem: "seal", Name: "submissions_total",
		Help: "Unseal share submissions by outcome: accepted, or refused as not_officer, bad_share, replayed, duplicate, wrong_target or error.",
	}, []string{"outcome"})}
	for _, o := range submissionOutcomes {
		m.submissions.WithLabelValues(o)
	}
	if reg == nil {
		return m
	}
	reg.MustRegister(m.submissions)
	for _, st := range states {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "custody", Subsystem: "seal", Name: "state",
			Help:        "1 for the seal state custodyd is in: awaiting_ceremony, sealed (waiting for officers' shares), unsealed, or fenced (another custodyd took over the token).",
			ConstLabels: prometheus.Labels{"state": st.String()},
		}, func() float64 { return b2f(s.State() == st) }))
	}
	for _, src := range sources {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "custody", Subsystem: "seal", Name: "pin_source",
			Help:        "1 for where the HSM PIN comes from: officers (split M-of-N, sealed start) or pin_file/pin_env (on the host: root there can use the HSM).",
			ConstLabels: prometheus.Labels{"source": src},
		}, func() float64 { return b2f(s.PINSource() == src) }))
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "custody", Subsystem: "seal", Name: "shares_accepted",
		Help: "Unseal shares accepted so far (discarded when they expire or the vault unseals).",
	}, func() float64 { return float64(s.Progress().Have) }))
	return m
}

func (m metrics) submission(outcome string) { m.submissions.WithLabelValues(outcome).Inc() }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
