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
run per line, and writes a Markdown table of them followed by the issue 7 targets
beside the measured figures. Memory and start-up figures, measured outside
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
	fmt.Fprintln(w, "| operation | concurrency | keys | ops/s | p50 ms | p99 ms | raw HSM ops/s | vault/raw | errors |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---|")
	for _, r := range rs {
		op := r.Op
		if r.Batch > 0 {
			op = fmt.Sprintf("%s (%d/call; ops = items)", r.Op, r.Batch)
		}
		raw, ratio := "—", "—"
		if r.Baseline != nil {
			raw = fmt.Sprintf("%.0f", r.Baseline.OpsPerSec)
			ratio = fmt.Sprintf("%.2f", r.Ratio)
		}
		errs := "0"
		if len(r.Errors) > 0 {
			errs = errorSummary(r.Errors)
		}
		fmt.Fprintf(w, "| %s | %d | %d | %.0f | %.3f | %.3f | %s | %s | %s |\n",
			op, r.Concurrency, r.Keys, r.OpsPerSec, r.Latency.P50, r.Latency.P99, raw, ratio, errs)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## Targets (issue 7) against measured")
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

func benchTargets(rs []benchResult, o benchReportOptions) []targetRow {
	const notRun = "not measured"
	var rows []targetRow
	rate := func(target, op string, want float64) {
		r := findResult(rs, op, 8, true)
		if r == nil {
			rows = append(rows, targetRow{target, notRun, "—"})
			return
		}
		unit := "ops/s"
		if r.Batch > 0 {
			unit = "items/s"
		}
		rows = append(rows, targetRow{target, fmt.Sprintf("%.0f %s", r.OpsPerSec, unit), atLeast(r.OpsPerSec, want)})
	}
	if r := findResult(rs, "decrypt", 8, true); r != nil {
		v := atLeast(r.OpsPerSec, 15000)
		if p := atMost(r.Latency.P99, 3); p != "yes" {
			v = strings.TrimPrefix(v+"; p99 "+p, "yes; ")
		}
		rows = append(rows, targetRow{"Decrypt ≥ 15,000 ops/s with p99 ≤ 3 ms (c=8)",
			fmt.Sprintf("%.0f ops/s, p99 %.2f ms (%d keys)", r.OpsPerSec, r.Latency.P99, r.Keys), v})
	} else {
		rows = append(rows, targetRow{"Decrypt ≥ 15,000 ops/s with p99 ≤ 3 ms (c=8)", notRun, "—"})
	}
	rate("ECDSA P-256 Sign ≥ 9,000 ops/s (c=8)", "sign", 9000)
	rate("GenerateDataKey ≥ 8,000 ops/s (c=8)", "datakey", 8000)
	rate("Batch Decrypt (100 items/call) ≥ 40,000 items/s (c=8)", "batch-decrypt", 40000)
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
