package server

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/keys"
)

// Metrics are custodyd's Prometheus metrics, registered on an injected
// registry. Labels are bounded: method (the fixed RPC set, and
// "<batch method>[i]" for batch items) and code (the gRPC code set); never
// key names or identities.
type Metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	// series caches the children of requests and latency by (method,
	// code), so that a request does not hash its label values: both sets
	// are bounded, so is the cache.
	series sync.Map // seriesKey -> *requestSeries
}

type seriesKey struct {
	method string
	code   codes.Code
}

type requestSeries struct {
	count   prometheus.Counter
	latency prometheus.Observer
}

// latencyBuckets span what a vault request costs on this hardware: ~100 µs
// for a session-object AES-GCM op up to ~1 s for an RSA-3072 keygen or a
// request stuck behind a full pool. Roughly ×2.5 per bucket.
var latencyBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
}

// NewMetrics registers the request metrics plus gauges that read the HSM
// pool and key registry when scraped.
func NewMetrics(reg prometheus.Registerer, m *hsm.Module, r func() *keys.Registry) *Metrics {
	mt := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "custody", Name: "requests_total",
			Help: "gRPC requests by method and status code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "custody", Name: "request_duration_seconds",
			Help:    "gRPC request latency including authorisation, the HSM operation and the durable audit write.",
			Buckets: latencyBuckets,
		}, []string{"method"}),
	}
	reg.MustRegister(mt.requests, mt.latency)
	if m != nil {
		stat := func(f func(hsm.Stats) float64) func() float64 { return func() float64 { return f(m.Stats()) } }
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "custody", Subsystem: "hsm", Name: "sessions_in_use",
				Help: "HSM sessions currently running an operation."}, stat(func(s hsm.Stats) float64 { return float64(s.SessionsInUse) })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "custody", Subsystem: "hsm", Name: "sessions_max",
				Help: "Maximum concurrent HSM sessions."}, stat(func(s hsm.Stats) float64 { return float64(s.SessionsMax) })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "custody", Subsystem: "hsm", Name: "sessions_open",
				Help: "HSM sessions open (in use or idle)."}, stat(func(s hsm.Stats) float64 { return float64(s.SessionsOpen) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "custody", Subsystem: "hsm", Name: "pool_waits_total",
				Help: "Operations that waited for a free HSM session."}, stat(func(s hsm.Stats) float64 { return float64(s.PoolWaits) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "custody", Subsystem: "hsm", Name: "device_errors_total",
				Help: "Session or device errors seen from the HSM."}, stat(func(s hsm.Stats) float64 { return float64(s.DeviceErrors) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "custody", Subsystem: "hsm", Name: "recoveries_total",
				Help: "Successful HSM re-initialisations."}, stat(func(s hsm.Stats) float64 { return float64(s.Recoveries) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "custody", Subsystem: "hsm", Name: "session_objects_total",
				Help: "Transient HSM session objects created (key transport, KWP data keys)."}, stat(func(s hsm.Stats) float64 { return float64(s.SessionObjects) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "custody", Subsystem: "hsm", Name: "recycles_total",
				Help: "Controlled HSM module re-initialisations that freed leaked session objects."}, stat(func(s hsm.Stats) float64 { return float64(s.Recycles) })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "custody", Subsystem: "hsm", Name: "state",
				Help: "HSM state: 0 ready, 1 degraded, 2 unavailable, 3 closed."}, stat(func(s hsm.Stats) float64 { return float64(s.State) })),
			&capCollector{m: m,
				capDesc: prometheus.NewDesc("custody_hsm_capability",
					"1 when the token provides the capability (and the features that need it are served), 0 when it does not; "+
						"mechanism and mode say what the start-up probe chose, verified whether it was compared with Go.",
					[]string{"capability", "mechanism", "mode", "verified"}, nil),
				profileDesc: prometheus.NewDesc("custody_hsm_profile_info", "The HSM vendor profile in use (always 1).", []string{"profile"}, nil),
			},
		)
	}
	if r != nil {
		reg.MustRegister(&keyStateCollector{r: r, desc: prometheus.NewDesc("custody_key_versions",
			"Key versions by state.", []string{"state"}, nil)})
	}
	return mt
}

func (mt *Metrics) observe(method string, code codes.Code, d time.Duration) {
	if mt == nil {
		return
	}
	k := seriesKey{method, code}
	v, ok := mt.series.Load(k)
	if !ok {
		v, _ = mt.series.LoadOrStore(k, &requestSeries{
			count:   mt.requests.WithLabelValues(method, code.String()),
			latency: mt.latency.WithLabelValues(method),
		})
	}
	rs := v.(*requestSeries)
	rs.count.Inc()
	rs.latency.Observe(d.Seconds())
}

// item counts one batch item under "<batch method>[i]" (no latency: the
// item's time is its batch's), so that custody_requests_total shows every
// item the audit log records, and an item refused for its budget or grant
// is seen by the alerts that watch refusals.
func (mt *Metrics) item(method string, code codes.Code) {
	if mt == nil {
		return
	}
	mt.requests.WithLabelValues(method+"[i]", code.String()).Inc()
}

type keyStateCollector struct {
	r    func() *keys.Registry
	desc *prometheus.Desc
}

func (c *keyStateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *keyStateCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.r()
	if r == nil {
		return
	}
	counts := r.CountByState()
	for _, st := range []keys.State{keys.StateEnabled, keys.StateDisabled, keys.StateDestroyScheduled, keys.StateDestroyed} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[st]), st.String())
	}
}

// capCollector reports the capability probe's decisions at scrape time:
// they change when the module re-initialises after a recovery. Labels are
// bounded: five capabilities, the mechanisms Custody knows, a few modes.
type capCollector struct {
	m                    *hsm.Module
	capDesc, profileDesc *prometheus.Desc
}

func (c *capCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.capDesc; ch <- c.profileDesc }

func (c *capCollector) Collect(ch chan<- prometheus.Metric) {
	caps := c.m.Capabilities()
	for _, cp := range caps.List() {
		v := 0.0
		if cp.OK {
			v = 1
		}
		mech := cp.Mechanism.Name
		if !cp.OK {
			mech = ""
		}
		verified := "false"
		if cp.Verified {
			verified = "true"
		}
		ch <- prometheus.MustNewConstMetric(c.capDesc, prometheus.GaugeValue, v, cp.Name, mech, cp.Mode, verified)
	}
	ch <- prometheus.MustNewConstMetric(c.profileDesc, prometheus.GaugeValue, 1, caps.Profile)
}

// hsmBuckets: a SoftHSM AES-GCM op takes ~30-100 µs, ECDSA ~100 µs,
// RSA-3072 signing ~3-10 ms, key generation up to seconds.
var hsmBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 5}

// HSMObserver registers custody_hsm_operation_seconds{op,result} and
// returns the hsm.Config.Observe callback that feeds it. op is the hsm
// package's fixed operation name; result is ok or error.
func HSMObserver(reg prometheus.Registerer) func(op string, d time.Duration, err error) {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "custody", Subsystem: "hsm", Name: "operation_seconds",
		Help:    "Time of one operation on the HSM (session held), by operation and result.",
		Buckets: hsmBuckets,
	}, []string{"op", "result"})
	reg.MustRegister(h)
	// Children by (op, failed), cached: op is the hsm package's fixed set.
	type key struct {
		op     string
		failed bool
	}
	var series sync.Map
	return func(op string, d time.Duration, err error) {
		k := key{op, err != nil}
		o, ok := series.Load(k)
		if !ok {
			result := "ok"
			if k.failed {
				result = "error"
			}
			o, _ = series.LoadOrStore(k, h.WithLabelValues(op, result))
		}
		o.(prometheus.Observer).Observe(d.Seconds())
	}
}
