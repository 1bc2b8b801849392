package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
)

// benchReportOptions are the flags of `custodyctl bench report`.
type benchReportOptions struct {
	results        string
	rssMB, hwmMB   float64
	startupSeconds float64
	startupKeys    int
}

func (a *app) benchReportCommand() *cobra.Command {
	var o benchReportOptions
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Render bench results (JSON lines from bench --output json) as Markdown",
		Long: `report reads the JSON lines that "custodyctl bench --output json" printed, one
run per line, and writes a Markdown table of them (beside the raw HSM and the
custody-echo figures of the same runs) followed by the targets beside the
measured figures. Memory and start-up figures, measured outside
custodyctl, are given as flags. make bench (softhsm-test/bench.sh) uses it to
write docs/benchmarks.md. It talks to no server.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(*cobra.Command, []string) error {
			rs, err := readBenchResults(o.results)
			if err != nil {
				return err
			}
			writeBenchMarkdown(a.stdout, rs, o)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.results, "results", "-", "file of JSON result lines (- for stdin)")
	f.Float64Var(&o.rssMB, "rss-mb", 0, "custodyd resident memory under load, MB (VmRSS)")
	f.Float64Var(&o.hwmMB, "hwm-mb", 0, "custodyd peak resident memory, MB (VmHWM)")
	f.Float64Var(&o.startupSeconds, "startup-seconds", 0, "custodyd start-up to ready, seconds")
	f.IntVar(&o.startupKeys, "startup-keys", 0, "keys in the store for the start-up measurement")
	return cmd
}

func readBenchResults(path string) ([]benchResult, error) {
	var r io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, localError(codes.FailedPrecondition, err)
		}
		defer f.Close()
		r = f
	}
	var out []benchResult
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		var br benchResult
		if err := json.Unmarshal([]byte(text), &br); err != nil {
			return nil, localError(codes.InvalidArgument, fmt.Errorf("%s line %d: %w", path, line, err))
		}
		out = append(out, br)
	}
	if err := sc.Err(); err != nil {
		return nil, localError(codes.FailedPrecondition, err)
	}
	if len(out) == 0 {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s holds no results", path))
	}
	return out, nil
}

func writeBenchMarkdown(w io.Writer, rs []benchResult, o benchReportOptions) {
	fmt.Fprintln(w, "| operation | c | keys | ops/s | p50 ms | p99 ms | raw HSM ops/s | vault/raw | echo ops/s | vault/echo | custodyd cores | client cores | load | errors |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	for _, r := range rs {
		op := r.Op
		if r.Batch > 0 {
			op = fmt.Sprintf("%s (%d/call; ops = items)", r.Op, r.Batch)
		}
		raw, ratio, echo, echoRatio := "—", "—", "—", "—"
		if r.Baseline != nil {
			raw = fmt.Sprintf("%.0f", r.Baseline.OpsPerSec)
			ratio = fmt.Sprintf("%.2f", r.Ratio)
		}
		if r.Echo != nil {
			echo = fmt.Sprintf("%.0f", r.Echo.OpsPerSec)
			echoRatio = fmt.Sprintf("%.2f", r.EchoRatio)
		}
		srv, cli, load := "—", "—", "—"
		if r.Seconds > 0 && r.ServerCPUSeconds > 0 {
			srv = fmt.Sprintf("%.2f", r.ServerCPUSeconds/r.Seconds)
		}
		if r.Seconds > 0 && r.ClientCPUSeconds > 0 {
			cli = fmt.Sprintf("%.2f", r.ClientCPUSeconds/r.Seconds)
		}
		if r.Load1 > 0 {
			load = fmt.Sprintf("%.1f", r.Load1)
		}
		errs := "0"
		if len(r.Errors) > 0 {
			errs = errorSummary(r.Errors)
		}
		fmt.Fprintf(w, "| %s | %d | %d | %.0f | %.3f | %.3f | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			op, r.Concurrency, r.Keys, r.OpsPerSec, r.Latency.P50, r.Latency.P99, raw, ratio, echo, echoRatio, srv, cli, load, errs)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## Targets against measured")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | measured | met |")
	fmt.Fprintln(w, "|---|---|---|")
	for _, t := range benchTargets(rs, o) {
		fmt.Fprintf(w, "| %s | %s | %s |\n", t.target, t.measured, t.verdict)
	}
}

type targetRow struct{ target, measured, verdict string }

// findResult picks the run of op at concurrency c; fewest keys when
// fewestKeys, most keys otherwise.
func findResult(rs []benchResult, op string, c int, fewestKeys bool) *benchResult {
	var best *benchResult
	for i := range rs {
		r := &rs[i]
		if r.Op != op || r.Concurrency != c {
			continue
		}
		if best == nil || (fewestKeys && r.Keys < best.Keys) || (!fewestKeys && r.Keys > best.Keys) {
			best = r
		}
	}
	return best
}

// atLeast judges measured >= want and says by how much it falls short.
func atLeast(measured, want float64) string {
	if measured >= want {
		return "yes"
	}
	return fmt.Sprintf("**no** (%.0f%% short)", 100*(want-measured)/want)
}

// atMost judges measured <= want and says by how much it is over.
func atMost(measured, want float64) string {
	if measured <= want {
		return "yes"
	}
	return fmt.Sprintf("**no** (%.0f%% over)", 100*(measured-want)/want)
}

// both joins two verdicts: "yes" only if both are.
func both(a, b string) string {
	switch {
	case a == "yes" && b == "yes":
		return "yes"
	case a == "yes":
		return b
	case b == "yes":
		return a
	}
	return a + "; " + b
}

// benchTargets are issue 15's targets (rates, latencies and ratios to the
// raw HSM in the same run) and issue 7's that still hold (many keys, memory,
// start-up).
func benchTargets(rs []benchResult, o benchReportOptions) []targetRow {
	const notRun = "not measured"
	var rows []targetRow
	rate := func(target, op string, c int, want, p50 float64) {
		r := findResult(rs, op, c, true)
		if r == nil {
			rows = append(rows, targetRow{target, notRun, "—"})
			return
		}
		v := atLeast(r.OpsPerSec, want)
		m := fmt.Sprintf("%.0f ops/s", r.OpsPerSec)
		if p50 > 0 {
			v = both(v, strings.Replace(atMost(r.Latency.P50, p50), "**no**", "**no**: p50", 1))
			m += fmt.Sprintf(", p50 %.2f ms", r.Latency.P50)
		}
		rows = append(rows, targetRow{target, m, v})
	}
	ratio := func(target, op string, c int, want float64) {
		r := findResult(rs, op, c, true)
		if r == nil || r.Baseline == nil || r.Baseline.OpsPerSec <= 0 {
			rows = append(rows, targetRow{target, notRun, "—"})
			return
		}
		rows = append(rows, targetRow{target, fmt.Sprintf("%.2f× (%.0f vs raw %.0f ops/s)", r.Ratio, r.OpsPerSec, r.Baseline.OpsPerSec),
			atLeast(r.Ratio, want)})
	}
	rate("Decrypt c=8 ≥ 12,000 ops/s, p50 ≤ 0.7 ms", "decrypt", 8, 12000, 0.7)
	rate("Decrypt c=1 ≥ 3,500 ops/s, p50 ≤ 0.3 ms", "decrypt", 1, 3500, 0.3)
	rate("ECDSA P-256 sign c=8 ≥ 12,000 ops/s", "sign", 8, 12000, 0)
	ratio("GenerateDataKey c=8 ≥ 0.8× raw HSM generate", "datakey", 8, 0.8)
	ratio("Decrypt c=64 ≥ 0.5× raw HSM decrypt", "decrypt", 64, 0.5)
	ratio("BatchDecrypt (100/call) c=8 ≥ 0.8× raw HSM decrypt", "batch-decrypt", 8, 0.8)
	few, many := findResult(rs, "decrypt", 8, true), findResult(rs, "decrypt", 8, false)
	if few != nil && many != nil && many.Keys > few.Keys && few.OpsPerSec > 0 {
		drop := 100 * (few.OpsPerSec - many.OpsPerSec) / few.OpsPerSec
		v := "yes"
		if drop > 10 {
			v = fmt.Sprintf("**no** (%.0f%% slower)", drop)
		}
		rows = append(rows, targetRow{"Decrypt with many keys within 10% of 10 keys (c=8)",
			fmt.Sprintf("%d keys %.0f ops/s vs %d keys %.0f ops/s (%+.1f%%)", many.Keys, many.OpsPerSec, few.Keys, few.OpsPerSec, -drop), v})
	} else {
		rows = append(rows, targetRow{"Decrypt with many keys within 10% of 10 keys (c=8)", notRun, "—"})
	}
	if o.hwmMB > 0 || o.rssMB > 0 {
		peak := max(o.hwmMB, o.rssMB)
		rows = append(rows, targetRow{"custodyd resident memory ≤ 150 MB under load",
			fmt.Sprintf("peak %.0f MB (VmHWM), %.0f MB at end of load (VmRSS)", o.hwmMB, o.rssMB), atMost(peak, 150)})
	} else {
		rows = append(rows, targetRow{"custodyd resident memory ≤ 150 MB under load", notRun, "—"})
	}
	if o.startupSeconds > 0 {
		rows = append(rows, targetRow{"Start-up to ready ≤ 3 s",
			fmt.Sprintf("%.2f s with %d keys", o.startupSeconds, o.startupKeys), atMost(o.startupSeconds, 3)})
	} else {
		rows = append(rows, targetRow{"Start-up to ready ≤ 3 s", notRun, "—"})
	}
	return rows
}
