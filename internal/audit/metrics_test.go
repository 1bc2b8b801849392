package audit

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// scrape registers the log's collector on a fresh registry (which checks
// descriptors and label consistency, as the server's registry would) and
// returns every unlabelled sample by name, labelled ones as name{result}.
func scrape(t *testing.T, l *Log) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(l.Collector()); err != nil {
		t.Fatalf("Register: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, lp := range m.GetLabel() {
				name += "{" + lp.GetValue() + "}"
			}
			switch {
			case m.GetCounter() != nil:
				out[name] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[name] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

func TestMetricsReportRecordsCheckpointsAndHead(t *testing.T) {
	l := openLog(t, t.TempDir(), newKey(t), testOptions())
	appendN(t, l, 7)
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 2)
	got := scrape(t, l)
	want := map[string]float64{
		"custody_audit_records_total":         9,
		"custody_audit_checkpoints_total{ok}": 1,
		"custody_audit_checkpoint_seq":        7,
		"custody_audit_head_seq":              9,
		"custody_audit_healthy":               1,
		"custody_audit_append_failures_total": 0,
		"custody_audit_sink_failures_total":   0,
	}
	for name, v := range want {
		if g, ok := got[name]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", name, g, ok, v)
		}
	}
	if f := got["custody_audit_fsyncs_total"]; f < 1 || f > 9 {
		t.Errorf("custody_audit_fsyncs_total = %v, want between 1 and 9 for 9 records", f)
	}
}

func TestMetricsShowUnhealthyLogAndFailedAppends(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "audit")
	l := openLog(t, dir, newKey(t), testOptions())
	appendN(t, l, 1)
	if err := os.Rename(dir, filepath.Join(parent, "away")); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(context.Background(), sampleRecord(1)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Append with directory gone = %v, want ErrUnavailable", err)
	}
	got := scrape(t, l)
	if got["custody_audit_healthy"] != 0 {
		t.Errorf("custody_audit_healthy = %v with the directory gone, want 0", got["custody_audit_healthy"])
	}
	if got["custody_audit_append_failures_total"] != 1 {
		t.Errorf("custody_audit_append_failures_total = %v, want 1", got["custody_audit_append_failures_total"])
	}
}

func TestMetricsCountSinkFailures(t *testing.T) {
	opts := testOptions()
	// A sink path under a regular file can never be created.
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	opts.Sink = &FileSink{Path: filepath.Join(blocker, "anchors.jsonl")}
	l := openLog(t, t.TempDir(), newKey(t), opts)
	appendN(t, l, 1)
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "sink failure counted", func() bool { return l.Stats().AnchorErrors == 1 })
	if got := scrape(t, l); got["custody_audit_sink_failures_total"] != 1 || got["custody_audit_anchors_total"] != 0 {
		t.Errorf("sink failures = %v, anchors = %v; want 1 and 0",
			got["custody_audit_sink_failures_total"], got["custody_audit_anchors_total"])
	}
}
