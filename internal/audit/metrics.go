package audit

import "github.com/prometheus/client_golang/prometheus"

// The log's metrics are read from Stats, Healthy, Head and LatestCheckpoint
// at scrape time, so the Append path pays nothing for them. The mean
// group-commit batch size is records_total / fsyncs_total. No metric has a
// label carrying a key name or an identity (unbounded, and not for a
// dashboard): the only label is the fixed result of a checkpoint.
var (
	descRecords = prometheus.NewDesc("custody_audit_records_total",
		"Audit records made durable since start.", nil, nil)
	descBatches = prometheus.NewDesc("custody_audit_batches_total",
		"Audit group commits that succeeded since start.", nil, nil)
	descFsyncs = prometheus.NewDesc("custody_audit_fsyncs_total",
		"Audit segment flushes (fdatasync) attempted, one per group commit.", nil, nil)
	descFailures = prometheus.NewDesc("custody_audit_append_failures_total",
		"Audit appends that failed closed because the log could not be written.", nil, nil)
	descCheckpoints = prometheus.NewDesc("custody_audit_checkpoints_total",
		"Audit checkpoints by result (ok: signed and written; error: could not be signed or written).",
		[]string{"result"}, nil)
	descAnchored = prometheus.NewDesc("custody_audit_anchors_total",
		"Checkpoints accepted by the off-box anchor sink.", nil, nil)
	descSinkFailures = prometheus.NewDesc("custody_audit_sink_failures_total",
		"Checkpoints the anchor sink failed to take (including a full sink queue).", nil, nil)
	descTorn = prometheus.NewDesc("custody_audit_torn_bytes_total",
		"Bytes of torn (never acknowledged) tail truncated when the log was opened.", nil, nil)
	descHealthy = prometheus.NewDesc("custody_audit_healthy",
		"1 if the last audit write succeeded, 0 if the log is unavailable (crypto operations fail closed).", nil, nil)
	descHeadSeq = prometheus.NewDesc("custody_audit_head_seq",
		"Sequence number of the last durable audit record.", nil, nil)
	descCheckpointSeq = prometheus.NewDesc("custody_audit_checkpoint_seq",
		"Sequence number covered by the latest signed checkpoint (0 if none).", nil, nil)
)

// Collector returns a prometheus.Collector for this log, to register on the
// server's injected prometheus.Registerer. Alert on custody_audit_healthy == 0,
// on a growing custody_audit_sink_failures_total (anchors are not leaving the
// box) and on custody_audit_head_seq - custody_audit_checkpoint_seq staying
// large (checkpoints are not being signed).
func (l *Log) Collector() prometheus.Collector { return logCollector{l} }

type logCollector struct{ l *Log }

// Describe implements prometheus.Collector.
func (c logCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRecords, descBatches, descFsyncs, descFailures, descCheckpoints,
		descAnchored, descSinkFailures, descTorn, descHealthy, descHeadSeq, descCheckpointSeq} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c logCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.l.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter(descRecords, st.Records)
	counter(descBatches, st.Batches)
	counter(descFsyncs, st.Fsyncs)
	counter(descFailures, st.Failures)
	counter(descCheckpoints, st.Checkpoints, "ok")
	counter(descCheckpoints, st.CheckpointErrors, "error")
	counter(descAnchored, st.Anchored)
	counter(descSinkFailures, st.AnchorErrors)
	counter(descTorn, st.TornBytes)
	healthy := 1.0
	if c.l.Healthy() != nil {
		healthy = 0
	}
	gauge(descHealthy, healthy)
	seq, _ := c.l.Head()
	gauge(descHeadSeq, float64(seq))
	cp, _ := c.l.LatestCheckpoint()
	gauge(descCheckpointSeq, float64(cp.Seq))
}
