package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// soakSample is one observation of custodyd during a soak.
type soakSample struct {
	Elapsed        float64 `json:"elapsed_seconds"`
	Requests       uint64  `json:"requests"`        // made by the soak (one per RPC or REST call)
	ServerRequests uint64  `json:"server_requests"` // custody_requests_total, all methods and codes
	RSSMB          float64 `json:"rss_mb"`          // VmRSS
	GoMB           float64 `json:"go_mb"`           // go_memstats_sys_bytes: mapped by the Go runtime, an upper bound of its share of RSS; the rest is C (the PKCS#11 module)
	Threads        int     `json:"threads"`
	FDs            int     `json:"fds"`
	Goroutines     int     `json:"goroutines"` // go_goroutines
	AuditBytes     int64   `json:"audit_bytes"`
	AuditRecords   uint64  `json:"audit_records"` // custody_audit_records_total
	Errors         uint64  `json:"errors"`        // unexpected failures so far
	Refused        uint64  `json:"refused"`       // expected budget refusals so far
	// HSM counters; -1 when custodyd does not export them (older builds).
	SessionObjects int64 `json:"hsm_session_objects"`
	Recycles       int64 `json:"hsm_recycles"`
}

// soakSampler reads custodyd's process, metrics and audit directory.
type soakSampler struct {
	pid        int
	metricsURL string
	auditDir   string
	tally      *soakTally
	client     http.Client
}

func (s *soakSampler) sample(ctx context.Context, start time.Time) (soakSample, error) {
	out := soakSample{Elapsed: time.Since(start).Seconds(), Requests: s.tally.requests.Load(),
		Errors: s.tally.failures.Load(), Refused: s.tally.refused.Load()}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.pid))
	if err != nil {
		return out, err
	}
	for _, line := range strings.Split(string(st), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			kb, _ := strconv.ParseFloat(f[1], 64)
			out.RSSMB = kb / 1024
		case "Threads:":
			out.Threads, _ = strconv.Atoi(f[1])
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.pid))
	if err != nil {
		return out, err
	}
	out.FDs = len(fds)
	m, err := s.metrics(ctx)
	if err != nil {
		return out, err
	}
	out.Goroutines = int(m["go_goroutines"])
	out.GoMB = m["go_memstats_sys_bytes"] / (1 << 20)
	out.ServerRequests = uint64(m["custody_requests_total"])
	out.AuditRecords = uint64(m["custody_audit_records_total"])
	out.SessionObjects, out.Recycles = -1, -1
	if v, ok := m["custody_hsm_session_objects_total"]; ok {
		out.SessionObjects = int64(v)
	}
	if v, ok := m["custody_hsm_recycles_total"]; ok {
		out.Recycles = int64(v)
	}
	err = filepath.WalkDir(s.auditDir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err == nil {
			out.AuditBytes += info.Size()
		}
		return nil
	})
	return out, err
}

// metrics fetches the Prometheus text exposition and sums each metric over
// its labels.
func (s *soakSampler) metrics(ctx context.Context) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.metricsURL, nil)
	if err != nil {
		return nil, err
	}
	r, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer r.Body.Close()
	if r.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP %d", s.metricsURL, r.StatusCode)
	}
	return parseMetrics(r.Body)
}

func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		if j := strings.LastIndexByte(rest, '}'); j >= 0 {
			rest = rest[j+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		out[name] += v
	}
	return out, sc.Err()
}

// soakResult is the whole run; --output json prints it.
type soakResult struct {
	Label            string                  `json:"label,omitempty"`
	Concurrency      int                     `json:"concurrency"`
	Keys             int                     `json:"keys"`
	Gateway          bool                    `json:"gateway"`
	Duration         float64                 `json:"duration_seconds"`
	SampleEvery      float64                 `json:"sample_every_seconds"`
	Warmup           float64                 `json:"warmup_fraction"`
	MaxRSSPerMillion float64                 `json:"max_rss_mb_per_million"`
	LoadStart        string                  `json:"loadavg_start,omitempty"`
	LoadEnd          string                  `json:"loadavg_end,omitempty"`
	Samples          []soakSample            `json:"samples"`
	Ops              map[string]*soakOpCount `json:"operations"`
	Latency          benchLatency            `json:"latency"`
	FirstError       string                  `json:"first_error,omitempty"`

	// The verdict (judge).
	WarmupSeconds        float64          `json:"warmup_seconds"`
	MeasuredRequests     uint64           `json:"measured_requests"`
	RSSPerMillion        float64          `json:"rss_mb_per_million"`
	Series               []soakSeriesTest `json:"series"`
	AuditBytesPerRequest float64          `json:"audit_bytes_per_request"`
	AuditBytesPerRecord  float64          `json:"audit_bytes_per_record"`
	Pass                 bool             `json:"pass"`
	Reasons              []string         `json:"reasons,omitempty"`
}

// soakSeriesTest says whether a series kept rising after the warm-up: it
// fails when the median of the last third of the measured samples exceeds
// the median of the first third by more than the tolerance. Medians, so
// that one burst (goroutines spike with the requests in flight) is not
// taken for growth.
type soakSeriesTest struct {
	Name        string  `json:"name"`
	FirstMedian float64 `json:"first_third_median"`
	LastMedian  float64 `json:"last_third_median"`
	Tolerance   float64 `json:"tolerance"`
	OK          bool    `json:"ok"`
}

// soakMinMeasured is the fewest samples after the warm-up that a verdict
// is drawn from.
const soakMinMeasured = 6

// judge computes the verdict from the samples.
func (r *soakResult) judge() {
	r.Pass, r.Reasons, r.Series = true, nil, nil
	fail := func(format string, args ...any) {
		r.Pass = false
		r.Reasons = append(r.Reasons, fmt.Sprintf(format, args...))
	}
	r.WarmupSeconds = r.Warmup * r.Duration
	var measured []soakSample
	for _, s := range r.Samples {
		if s.Elapsed >= r.WarmupSeconds {
			measured = append(measured, s)
		}
	}
	if len(r.Samples) > 0 {
		last := r.Samples[len(r.Samples)-1]
		if last.Errors > 0 {
			fail("%d requests failed unexpectedly (first: %s)", last.Errors, r.FirstError)
		}
		first := r.Samples[0]
		if last.Requests > first.Requests {
			r.AuditBytesPerRequest = float64(last.AuditBytes-first.AuditBytes) / float64(last.Requests-first.Requests)
		}
		if last.AuditRecords > first.AuditRecords {
			r.AuditBytesPerRecord = float64(last.AuditBytes-first.AuditBytes) / float64(last.AuditRecords-first.AuditRecords)
		}
	}
	if len(measured) < soakMinMeasured {
		fail("only %d samples after the warm-up; need %d (run longer or sample more often)", len(measured), soakMinMeasured)
		return
	}
	r.MeasuredRequests = measured[len(measured)-1].Requests - measured[0].Requests
	if r.MeasuredRequests == 0 {
		fail("no request completed after the warm-up")
		return
	}
	// Least-squares slope of RSS over requests: robust to the sawtooth of
	// the Go heap and of recycling, unlike first-versus-last.
	x := make([]float64, len(measured))
	y := make([]float64, len(measured))
	for i, s := range measured {
		x[i], y[i] = float64(s.Requests), s.RSSMB
	}
	r.RSSPerMillion = slope(x, y) * 1e6
	if r.RSSPerMillion >= r.MaxRSSPerMillion {
		fail("resident memory grew %.1f MB per million requests after the warm-up (limit %.1f)", r.RSSPerMillion, r.MaxRSSPerMillion)
	}
	third := len(measured) / 3
	for _, sr := range []struct {
		name string
		abs  float64
		get  func(soakSample) float64
	}{
		{"goroutines", 20, func(s soakSample) float64 { return float64(s.Goroutines) }},
		{"threads", 4, func(s soakSample) float64 { return float64(s.Threads) }},
		{"open files", 10, func(s soakSample) float64 { return float64(s.FDs) }},
	} {
		var first, last []float64
		for i, s := range measured {
			if i < third {
				first = append(first, sr.get(s))
			}
			if i >= len(measured)-third {
				last = append(last, sr.get(s))
			}
		}
		t := soakSeriesTest{Name: sr.name, FirstMedian: median(first), LastMedian: median(last)}
		t.Tolerance = max(sr.abs, 0.1*t.FirstMedian)
		t.OK = t.LastMedian <= t.FirstMedian+t.Tolerance
		if !t.OK {
			fail("%s kept rising: median %.0f in the first third after the warm-up, %.0f in the last", sr.name, t.FirstMedian, t.LastMedian)
		}
		r.Series = append(r.Series, t)
	}
}

// median of v (0 for none); v is reordered.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

// slope is the least-squares slope of y over x (0 when x does not vary).
func slope(x, y []float64) float64 {
	n := float64(len(x))
	var sx, sy, sxx, sxy float64
	for i := range x {
		sx += x[i]
		sy += y[i]
		sxx += x[i] * x[i]
		sxy += x[i] * y[i]
	}
	d := n*sxx - sx*sx
	if d == 0 || math.IsNaN(d) {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

func writeSoakMarkdown(w io.Writer, r *soakResult) {
	title := r.Label
	if title == "" {
		title = "soak"
	}
	fmt.Fprintf(w, "### %s\n\n", title)
	verdict := "PASS"
	if !r.Pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "**Verdict: %s.** ", verdict)
	if r.MeasuredRequests > 0 {
		fmt.Fprintf(w, "After the warm-up (first %.0f s), resident memory grew **%.2f MB per million requests** (limit %.1f) over %d requests",
			r.WarmupSeconds, r.RSSPerMillion, r.MaxRSSPerMillion, r.MeasuredRequests)
		for _, t := range r.Series {
			fmt.Fprintf(w, "; %s %.0f → %.0f", t.Name, t.FirstMedian, t.LastMedian)
		}
		fmt.Fprint(w, " (medians of the first and last third after the warm-up)")
	}
	if len(r.Reasons) > 0 {
		fmt.Fprintf(w, ". Failed: %s", strings.Join(r.Reasons, "; "))
	}
	fmt.Fprint(w, ".\n\n")
	var total, refused uint64
	if n := len(r.Samples); n > 0 {
		total, refused = r.Samples[n-1].Requests, r.Samples[n-1].Refused
	}
	rate := 0.0
	if n := len(r.Samples); n > 0 && r.Samples[n-1].Elapsed > 0 {
		rate = float64(total) / r.Samples[n-1].Elapsed
	}
	fmt.Fprintf(w, "%d requests in %.0f s (%.0f/s) from %d closed-loop workers over %d AES keys plus a signing, a MAC and a budgeted key",
		total, r.Duration, rate, r.Concurrency, r.Keys)
	if r.Gateway {
		fmt.Fprint(w, ", the REST gateway included")
	}
	fmt.Fprintf(w, "; %d budget refusals (expected); latency per request p50 %.2f ms, p99 %.2f ms, max %.0f ms; the audit directory grew %.0f bytes per request, %.0f per audit record (batch items are one record each, checkpoints included); load average %s at the start, %s at the end.\n\n",
		refused, r.Latency.P50, r.Latency.P99, r.Latency.Max, r.AuditBytesPerRequest, r.AuditBytesPerRecord, dash(r.LoadStart), dash(r.LoadEnd))
	fmt.Fprintln(w, "| t (s) | requests | RSS (MB) | Go runtime (MB) | goroutines | threads | open files | audit (MB) | HSM session objects | recycles | errors | budget refusals |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, s := range r.Samples {
		fmt.Fprintf(w, "| %.0f | %d | %.1f | %.1f | %d | %d | %d | %.1f | %s | %s | %d | %d |\n", s.Elapsed, s.Requests, s.RSSMB, s.GoMB, s.Goroutines, s.Threads, s.FDs,
			float64(s.AuditBytes)/(1<<20), dashIfNeg(s.SessionObjects), dashIfNeg(s.Recycles), s.Errors, s.Refused)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| operation | requests | errors |")
	fmt.Fprintln(w, "|---|---:|---|")
	for _, name := range soakOpNames(r.Ops) {
		c := r.Ops[name]
		var errs []string
		for code, n := range c.Errors {
			errs = append(errs, fmt.Sprintf("%s %d", code, n))
		}
		sort.Strings(errs)
		fmt.Fprintf(w, "| %s | %d | %s |\n", name, c.Requests, dash(strings.Join(errs, ", ")))
	}
	fmt.Fprintln(w)
}

func dashIfNeg(v int64) string {
	if v < 0 {
		return "–"
	}
	return strconv.FormatInt(v, 10)
}
