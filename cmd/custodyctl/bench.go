package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/client"
)

// benchOptions are the flags of `custodyctl bench`.
type benchOptions struct {
	op          string
	concurrency int
	conns       int
	duration    time.Duration
	count       uint64
	payload     int
	keys        int
	keyPrefix   string
	key         string
	batch       int
	quiet       bool
	context     []string

	setup               bool
	setupCert, setupKey string

	pprofAddr                string
	cpuProfile, mutexProfile string

	baseline           bool
	hsmURI, hsmPINFile string
	hsmBench           string

	echoAddr  string
	serverPID int
}

// benchLatency is a latency summary in milliseconds.
type benchLatency struct {
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
	Mean float64 `json:"mean_ms"`
}

// benchResult is what one `custodyctl bench` run reports (the --output json
// form is this struct, one line).
type benchResult struct {
	Op          string `json:"op"`
	Concurrency int    `json:"concurrency"`
	Connections int    `json:"connections"`
	Keys        int    `json:"keys"`
	Payload     int    `json:"payload_bytes"`
	Batch       int    `json:"batch,omitempty"`
	// KeysCreated and SetupSeconds describe --setup (keys created this run).
	KeysCreated  int     `json:"keys_created,omitempty"`
	SetupSeconds float64 `json:"setup_seconds,omitempty"`
	// Seconds is the measured wall time from the first request to the
	// last answer.
	Seconds float64 `json:"duration_seconds"`
	// Ops counts successful operations: items for batch-decrypt, calls
	// otherwise. Calls counts RPCs, successful or not.
	Ops       uint64  `json:"ops"`
	Calls     uint64  `json:"calls"`
	OpsPerSec float64 `json:"ops_per_sec"`
	// Latency is per call (per batch for batch-decrypt), failures included.
	Latency benchLatency `json:"latency"`
	// Errors counts failed calls (and failed batch items) by gRPC code name.
	Errors map[string]uint64 `json:"errors"`
	// FirstError is the message of the first failed call, if any: a code
	// alone does not say which grant or key is missing.
	FirstError string `json:"first_error,omitempty"`
	firstCode  codes.Code
	// Baseline is the raw PKCS#11 rate of the same operation on the same
	// token, measured by custody-hsmbench right after the vault run.
	Baseline *hsmBenchResult `json:"baseline,omitempty"`
	// Ratio is OpsPerSec / Baseline.OpsPerSec.
	Ratio float64 `json:"ratio_vault_to_raw,omitempty"`
	// Profiles lists the profile files written.
	Profiles []string `json:"profiles,omitempty"`
	// Echo is the same workload against custody-echo (--echo-addr): bare
	// gRPC over the same mutual TLS, no vault work. EchoRatio is
	// OpsPerSec / Echo.OpsPerSec.
	Echo      *benchEcho `json:"echo,omitempty"`
	EchoRatio float64    `json:"ratio_vault_to_echo,omitempty"`
	// ClientCPUSeconds is this process's CPU time over the measured run;
	// ServerCPUSeconds custodyd's (--server-pid), from /proc.
	ClientCPUSeconds float64 `json:"client_cpu_seconds,omitempty"`
	ServerCPUSeconds float64 `json:"server_cpu_seconds,omitempty"`
	// Load1 is the machine's one-minute load average when the run began.
	Load1 float64 `json:"load1,omitempty"`
}

// benchEcho is the echo run's summary.
type benchEcho struct {
	OpsPerSec float64      `json:"ops_per_sec"`
	Latency   benchLatency `json:"latency"`
	Errors    uint64       `json:"errors"`
}

// echoOps are the operations custody-echo answers.
var echoOps = []string{"encrypt", "decrypt", "batch-decrypt", "decrypt-coalesced"}

func (a *app) benchCommand() *cobra.Command {
	var o benchOptions
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure custodyd's throughput and latency for one operation",
		Long: `bench runs closed-loop workers against custodyd for one operation and
reports operations per second, latency percentiles (p50/p90/p99/max) and errors
by gRPC code. Workers share a small pool of connections (one per 4 workers
unless --connections says otherwise); inputs (ciphertexts, wrapped data keys)
are prepared before the clock starts.

Keys are named PREFIX + CLASS + "-" + INDEX, CLASS being aes (encrypt, decrypt,
datakey, unwrap, batch-decrypt), p256 (sign) or hmac (mac): with the defaults,
--keys 3 --op decrypt uses bench-aes-0, bench-aes-1 and bench-aes-2. They must
exist and be granted to the calling identity; --setup creates any missing ones
as the operator whose certificate is --setup-cert/--setup-key.

--context sets the encryption context every request carries (default
tenant=bench): a grant with a context_match (a ceremony's, say) allows only
requests whose context matches it.

--baseline also runs custody-hsmbench (next to this executable, or on PATH) on
the same token for the same time and prints the ratio vault/raw. It reads the
token PIN from --hsm-pin-file itself; custodyctl never sees it. For SoftHSM,
custody-hsmbench finds the token through SOFTHSM2_CONF, as custodyd does: the
dev vault's is .custody-dev/softhsm2.conf.

--cpuprofile/--mutexprofile fetch profiles of custodyd covering the run from
its --pprof endpoint (--pprof-addr, the loopback metrics listener).

--echo-addr also runs the same workload, right after, against custody-echo
(a bare gRPC server over the same mutual TLS that echoes its input; encrypt,
decrypt, batch-decrypt and decrypt-coalesced only) and prints vault/echo.
--server-pid reports custodyd's CPU time over the run (from /proc).

decrypt-coalesced is decrypt through the Go client package with
CoalesceDecrypts on: one client (one connection) shared by the workers, whose
concurrent calls travel as BatchDecrypt requests.`,
		Example: `  custodyctl bench --op decrypt --key demo --duration 5s      # against make run, as the dev relay
  custodyctl bench --op decrypt --concurrency 8 --duration 10s --keys 10
  custodyctl bench --op sign --keys 1 --setup --setup-cert operator.pem --setup-key operator-key.pem
  custodyctl bench --op datakey --key relay-messages --context tenant=acme   # a ceremony's context-bound grant
  custodyctl bench --op decrypt-coalesced --key demo -c 64                 # the Go client gathering calls into batches
  SOFTHSM2_CONF=.custody-dev/softhsm2.conf custodyctl bench --op decrypt --key demo --baseline \
    --hsm-uri "pkcs11:token=custody-dev?module-path=/usr/lib/softhsm/libsofthsm2.so" --hsm-pin-file .custody-dev/pin`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runBench(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.op, "op", "decrypt", "operation: "+strings.Join(benchOps, "|"))
	f.IntVarP(&o.concurrency, "concurrency", "c", 8, "closed-loop workers (requests in flight)")
	f.IntVar(&o.conns, "connections", 0, "gRPC connections shared by the workers (default one per 4 workers)")
	f.DurationVarP(&o.duration, "duration", "d", 10*time.Second, "how long to run (ignored with --count)")
	f.Uint64VarP(&o.count, "count", "n", 0, "stop after this many calls instead of after --duration")
	f.IntVar(&o.payload, "payload", 32, "plaintext / data size in bytes (encrypt, decrypt, mac, sign digest input)")
	f.IntVar(&o.keys, "keys", 1, "number of keys the requests are spread over")
	f.StringVar(&o.keyPrefix, "key-prefix", "bench-", "prefix of the bench key names")
	f.StringVar(&o.key, "key", "", "use this one existing key instead of PREFIX+CLASS-INDEX names (e.g. demo on a dev vault)")
	f.IntVar(&o.batch, "batch", 100, "items per call for batch-decrypt")
	f.StringSliceVar(&o.context, "context", defaultBenchContext, "encryption context k=v[,k=v...] of every request (to match a grant's context_match)")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "no live progress line on stderr")
	f.BoolVar(&o.setup, "setup", false, "create missing bench keys first (needs --setup-cert and --setup-key)")
	f.StringVar(&o.setupCert, "setup-cert", "", "operator client certificate used by --setup")
	f.StringVar(&o.setupKey, "setup-key", "", "operator client key used by --setup")
	f.StringVar(&o.pprofAddr, "pprof-addr", "127.0.0.1:9090", "custodyd's HTTP listener serving /debug/pprof (custodyd --pprof)")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write custodyd's CPU profile over the run to FILE")
	f.StringVar(&o.mutexProfile, "mutexprofile", "", "write custodyd's mutex contention profile over the run to FILE")
	f.BoolVar(&o.baseline, "baseline", false, "also measure the raw PKCS#11 rate on the same token (custody-hsmbench)")
	f.StringVar(&o.hsmURI, "hsm-uri", "", "PKCS#11 URI of custodyd's token (with --baseline)")
	f.StringVar(&o.hsmPINFile, "hsm-pin-file", "", "file holding the token's user PIN (with --baseline)")
	f.StringVar(&o.hsmBench, "hsmbench", "", "path of custody-hsmbench (default: next to custodyctl, then PATH)")
	f.StringVar(&o.echoAddr, "echo-addr", "", "also run the workload against custody-echo at this address")
	f.IntVar(&o.serverPID, "server-pid", 0, "custodyd's process id, to report its CPU time over the run")
	cmd.AddCommand(a.benchReportCommand(), a.benchSoakCommand())
	return cmd
}

func (o *benchOptions) check() error {
	switch {
	case !contains(benchOps, o.op):
		return usageErrorf("--op must be one of %s, not %q", strings.Join(benchOps, "|"), o.op)
	case o.concurrency < 1 || o.concurrency > 4096:
		return usageErrorf("--concurrency must be 1..4096")
	case o.conns < 0 || o.conns > o.concurrency:
		return usageErrorf("--connections must be 1..--concurrency")
	case o.count == 0 && o.duration <= 0:
		return usageErrorf("give a positive --duration or --count")
	case o.payload < 0 || o.payload > 1<<20:
		return usageErrorf("--payload must be 0..1048576 bytes")
	case o.keys < 1 || o.keys > 1_000_000:
		return usageErrorf("--keys must be 1..1000000")
	case o.batch < 1 || o.batch > 10_000:
		return usageErrorf("--batch must be 1..10000")
	case o.setup && (o.setupCert == "" || o.setupKey == ""):
		return usageErrorf("--setup needs --setup-cert and --setup-key (an operator certificate)")
	case o.baseline && (o.hsmURI == "" || o.hsmPINFile == ""):
		return usageErrorf("--baseline needs --hsm-uri and --hsm-pin-file")
	case (o.cpuProfile != "" || o.mutexProfile != "") && o.count > 0:
		return usageErrorf("--cpuprofile and --mutexprofile need a --duration run, not --count")
	case o.echoAddr != "" && !contains(echoOps, o.op):
		return usageErrorf("--echo-addr measures %s only", strings.Join(echoOps, ", "))
	case o.serverPID < 0:
		return usageErrorf("--server-pid must be a process id")
	}
	if o.conns == 0 {
		o.conns = (o.concurrency + 3) / 4
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// dialPool opens n connections to custodyd with the client certificate.
func (a *app) dialPool(n int) ([]*grpc.ClientConn, error) {
	cfg, err := a.tlsConfig()
	if err != nil {
		return nil, err
	}
	conns := make([]*grpc.ClientConn, 0, n)
	for range n {
		c, err := a.dial(cfg)
		if err != nil {
			closeAll(conns)
			return nil, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

func closeAll(conns []*grpc.ClientConn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

func (a *app) runBench(ctx context.Context, o benchOptions) error {
	if err := o.check(); err != nil {
		return err
	}
	res := &benchResult{Op: o.op, Concurrency: o.concurrency, Connections: o.conns, Keys: o.keys, Payload: o.payload}
	switch o.op {
	case "batch-decrypt":
		res.Batch = o.batch
	case "decrypt-coalesced":
		res.Connections = 1 // one client.Client, as a relay would use
	}
	class := benchClassOf(o.op)
	keys := benchKeyNames(o.keyPrefix, class, o.keys)
	if o.key != "" {
		keys = []string{o.key} // one existing key, e.g. the dev vault's demo
	}
	if o.setup {
		start := time.Now()
		n, err := a.benchSetup(ctx, o, class, keys)
		if err != nil {
			return err
		}
		res.KeysCreated, res.SetupSeconds = n, time.Since(start).Seconds()
		if !o.quiet {
			fmt.Fprintf(a.stderr, "setup: %d keys created (%d already present) in %.1fs\n", n, len(keys)-n, res.SetupSeconds)
		}
	}

	encCtx, err := parseContext(o.context)
	if err != nil {
		return err
	}
	if err := a.runWorkload(ctx, o, keys, encCtx, res, true); err != nil {
		return err
	}
	if o.baseline {
		base, err := a.runHSMBench(ctx, o, time.Duration(res.Seconds*float64(time.Second)))
		if err != nil {
			return err
		}
		res.Baseline = base
		if base.OpsPerSec > 0 {
			res.Ratio = res.OpsPerSec / base.OpsPerSec
		}
	}
	if o.echoAddr != "" && res.Ops > 0 {
		ea := *a
		ea.addr, ea.conn = o.echoAddr, nil
		eo := o
		eo.cpuProfile, eo.mutexProfile, eo.serverPID = "", "", 0
		er := &benchResult{}
		if !o.quiet {
			fmt.Fprintf(a.stderr, "echo: %s against custody-echo at %s\n", o.op, o.echoAddr)
		}
		if err := ea.runWorkload(ctx, eo, keys, encCtx, er, false); err != nil {
			return fmt.Errorf("echo: %w", err)
		}
		res.Echo = &benchEcho{OpsPerSec: er.OpsPerSec, Latency: er.Latency}
		for _, n := range er.Errors {
			res.Echo.Errors += n
		}
		if er.OpsPerSec > 0 {
			res.EchoRatio = res.OpsPerSec / er.OpsPerSec
		}
	}
	if err := a.emitValue(res, func(w io.Writer) { writeBenchText(w, res) }); err != nil {
		return err
	}
	if res.Ops == 0 {
		return remoteError(res.firstCode, fmt.Errorf("no %s operation succeeded (%s; first: %s)", o.op, errorSummary(res.Errors), res.FirstError))
	}
	return nil
}

// runWorkload dials a's address, prepares the inputs of o.op and runs the
// closed loop, filling res (and fetching custodyd's profiles if asked).
func (a *app) runWorkload(ctx context.Context, o benchOptions, keys []string, encCtx map[string]string, res *benchResult, profile bool) error {
	conns, err := a.dialPool(o.conns)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	clients := make([]custodyv1.CryptoServiceClient, len(conns))
	for i, c := range conns {
		clients[i] = custodyv1.NewCryptoServiceClient(c)
	}
	var coalesced *client.Client
	if o.op == "decrypt-coalesced" {
		coalesced, err = client.Dial(ctx, client.Config{Addr: a.addr, CAFile: a.caFile, CertFile: a.certFile, KeyFile: a.keyFile,
			Timeout: a.timeout, CoalesceDecrypts: true, MaxAttempts: 1})
		if err != nil {
			return localError(codes.FailedPrecondition, err)
		}
		defer coalesced.Close()
	}
	wl, err := prepareBench(ctx, o.op, keys, o.payload, o.batch, o.concurrency, clients, encCtx, coalesced)
	if err != nil {
		return err
	}
	var profiles *profileFetch
	if profile {
		profiles = a.startProfiles(ctx, o)
	}
	res.Load1 = loadAverage()
	cpu0, srv0 := selfCPU(), procCPU(o.serverPID)
	if err := a.measure(ctx, o, wl, clients, res); err != nil {
		return err
	}
	res.ClientCPUSeconds = (selfCPU() - cpu0).Seconds()
	if o.serverPID > 0 {
		res.ServerCPUSeconds = (procCPU(o.serverPID) - srv0).Seconds()
	}
	if profiles != nil {
		if res.Profiles, err = profiles.wait(); err != nil {
			return err
		}
	}
	return nil
}

// benchWorker is one closed-loop worker's tally.
type benchWorker struct {
	hist    latencyHist
	errs    map[codes.Code]uint64
	ok      uint64
	calls   uint64
	errMsg  string // first error message, for the report when nothing succeeds
	errCode codes.Code
}

// measure runs the closed loop and fills in res.
func (a *app) measure(ctx context.Context, o benchOptions, wl *benchWorkload, clients []custodyv1.CryptoServiceClient, res *benchResult) error {
	var (
		stop    atomic.Bool
		claimed atomic.Uint64
		okOps   atomic.Uint64 // for the progress line only
		errOps  atomic.Uint64
		wg      sync.WaitGroup
	)
	workers := make([]*benchWorker, o.concurrency)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	var ended time.Time
	var endMu sync.Mutex
	for w := range workers {
		bw := &benchWorker{errs: map[codes.Code]uint64{}}
		workers[w] = bw
		c := clients[w%len(clients)]
		wg.Go(func() {
			defer func() {
				endMu.Lock()
				ended = time.Now()
				endMu.Unlock()
			}()
			for n := uint64(0); !stop.Load(); n++ {
				if o.count > 0 && claimed.Add(1) > o.count {
					return
				}
				callCtx, callCancel := a.callCtx(runCtx)
				t0 := time.Now()
				ok, itemErrs, err := wl.call(callCtx, c, w, n)
				bw.hist.record(time.Since(t0))
				callCancel()
				if err != nil && runCtx.Err() != nil {
					return // interrupted: not the server's failure
				}
				bw.calls++
				bw.ok += uint64(ok)
				okOps.Add(uint64(ok))
				if err != nil {
					bw.errs[status.Code(err)]++
					errOps.Add(1)
					if bw.errMsg == "" {
						bw.errMsg, bw.errCode = status.Convert(err).Message(), status.Code(err)
					}
				}
				for _, code := range itemErrs {
					bw.errs[code]++
					errOps.Add(1)
				}
			}
		})
	}

	done := make(chan struct{})
	var progress sync.WaitGroup
	progress.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		var deadline <-chan time.Time
		if o.count == 0 {
			t := time.NewTimer(o.duration)
			defer t.Stop()
			deadline = t.C
		}
		var last uint64
		interrupted := ctx.Done()
		for {
			select {
			case <-done:
				return
			case <-interrupted:
				stop.Store(true)
				interrupted = nil
			case <-deadline:
				stop.Store(true)
				deadline = nil
			case now := <-tick.C:
				if o.quiet {
					continue
				}
				n := okOps.Load()
				el := now.Sub(start).Seconds()
				fmt.Fprintf(a.stderr, "\rbench %s: %4.0fs  %d ops  %.0f ops/s (last second %d)  errors %d   ",
					o.op, el, n, float64(n)/el, n-last, errOps.Load())
				last = n
			}
		}
	})
	wg.Wait()
	close(done)
	progress.Wait()
	if !o.quiet {
		fmt.Fprintln(a.stderr)
	}
	if ended.IsZero() {
		ended = time.Now()
	}

	var hist latencyHist
	errs := map[codes.Code]uint64{}
	var firstMsg string
	firstCode := codes.Unavailable
	for _, bw := range workers {
		hist.merge(&bw.hist)
		res.Ops += bw.ok
		res.Calls += bw.calls
		for c, n := range bw.errs {
			errs[c] += n
		}
		if firstMsg == "" && bw.errMsg != "" {
			firstMsg, firstCode = bw.errMsg, bw.errCode
		}
	}
	res.Seconds = ended.Sub(start).Seconds()
	if res.Seconds > 0 {
		res.OpsPerSec = float64(res.Ops) / res.Seconds
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	res.Latency = benchLatency{
		P50: ms(hist.quantile(0.50)), P90: ms(hist.quantile(0.90)), P99: ms(hist.quantile(0.99)),
		Max: ms(time.Duration(hist.max)), Mean: ms(hist.mean()),
	}
	res.Errors = map[string]uint64{}
	for c, n := range errs {
		res.Errors[c.String()] = n
	}
	res.FirstError = oneLine(firstMsg)
	res.firstCode = firstCode
	if ctx.Err() != nil && res.Calls == 0 {
		return ctx.Err()
	}
	return nil
}

// errorSummary renders errors by code, most frequent first.
func errorSummary(errs map[string]uint64) string {
	if len(errs) == 0 {
		return "no errors"
	}
	names := make([]string, 0, len(errs))
	for n := range errs {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		if errs[names[i]] != errs[names[j]] {
			return errs[names[i]] > errs[names[j]]
		}
		return names[i] < names[j]
	})
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s=%d", n, errs[n])
	}
	return strings.Join(parts, ", ")
}

func writeBenchText(w io.Writer, r *benchResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	what := r.Op
	if r.Batch > 0 {
		what = fmt.Sprintf("%s (%d items per call; ops are items)", r.Op, r.Batch)
	}
	fmt.Fprintf(tw, "operation\t%s\n", what)
	fmt.Fprintf(tw, "concurrency\t%d workers over %d connections\n", r.Concurrency, r.Connections)
	fmt.Fprintf(tw, "keys\t%d\n", r.Keys)
	fmt.Fprintf(tw, "payload\t%d bytes\n", r.Payload)
	fmt.Fprintf(tw, "duration\t%.2fs\n", r.Seconds)
	fmt.Fprintf(tw, "ops\t%d (%d calls)\n", r.Ops, r.Calls)
	fmt.Fprintf(tw, "ops/s\t%.0f\n", r.OpsPerSec)
	fmt.Fprintf(tw, "latency\tp50 %.3fms  p90 %.3fms  p99 %.3fms  max %.3fms\n", r.Latency.P50, r.Latency.P90, r.Latency.P99, r.Latency.Max)
	fmt.Fprintf(tw, "errors\t%s\n", errorSummary(r.Errors))
	if r.ServerCPUSeconds > 0 && r.Seconds > 0 {
		fmt.Fprintf(tw, "cpu\tcustodyd %.2f cores, client %.2f cores (%.0f µs custodyd CPU per op)\n", r.ServerCPUSeconds/r.Seconds,
			r.ClientCPUSeconds/r.Seconds, 1e6*r.ServerCPUSeconds/max(float64(r.Ops), 1))
	}
	if b := r.Baseline; b != nil {
		fmt.Fprintf(tw, "raw hsm\t%.0f ops/s (%s, %d workers, one process)\n", b.OpsPerSec, b.Op, b.Concurrency)
		fmt.Fprintf(tw, "vault/raw\t%.2f\n", r.Ratio)
	}
	if e := r.Echo; e != nil {
		fmt.Fprintf(tw, "echo\t%.0f ops/s, p50 %.3fms (custody-echo: gRPC and mutual TLS only)\n", e.OpsPerSec, e.Latency.P50)
		fmt.Fprintf(tw, "vault/echo\t%.2f\n", r.EchoRatio)
	}
	for _, p := range r.Profiles {
		fmt.Fprintf(tw, "profile\t%s\n", p)
	}
	_ = tw.Flush()
}

// benchSetup creates the missing bench keys as the operator. It returns how
// many it created; keys that already exist are left as they are.
func (a *app) benchSetup(ctx context.Context, o benchOptions, class benchKeyClass, keys []string) (int, error) {
	op := *a
	op.certFile, op.keyFile, op.conn = o.setupCert, o.setupKey, nil
	kc, err := op.keys()
	if err != nil {
		return 0, err
	}
	defer op.close()
	var created atomic.Int64
	_, err = prepareEachKey(ctx, keys, 8, func(ctx context.Context, name string) error {
		cctx, cancel := a.callCtx(ctx)
		defer cancel()
		_, err := kc.CreateKey(cctx, &custodyv1.CreateKeyRequest{
			Name: name, Purpose: class.purpose, Description: "custodyctl bench key",
		})
		switch status.Code(err) {
		case codes.OK:
			created.Add(1)
			return nil
		case codes.AlreadyExists:
			return nil
		}
		return err
	})
	if err != nil {
		return int(created.Load()), fmt.Errorf("setup: %w", err)
	}
	return int(created.Load()), nil
}

// prepareEachKey runs fn for every key with up to workers at a time and
// stops at the first failure.
func prepareEachKey(ctx context.Context, keys []string, workers int, fn func(context.Context, string) error) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		done  atomic.Int64
		next  = make(chan string)
	)
	for range min(workers, len(keys)) {
		wg.Go(func() {
			for k := range next {
				if err := fn(ctx, k); err != nil {
					once.Do(func() { first = fmt.Errorf("key %q: %w", k, err); cancel() })
					continue
				}
				done.Add(1)
			}
		})
	}
feed:
	for _, k := range keys {
		select {
		case next <- k:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if first != nil {
		return int(done.Load()), first
	}
	if err := ctx.Err(); err != nil {
		return int(done.Load()), err
	}
	return int(done.Load()), nil
}
