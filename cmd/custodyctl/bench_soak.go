package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// soakOptions are the flags of `custodyctl bench soak`.
type soakOptions struct {
	duration, sampleEvery time.Duration
	warmup                float64
	concurrency, conns    int
	keys                  int
	keyPrefix             string
	recipientPub          string
	gateway               string
	pid                   int
	metricsURL            string
	auditDir              string
	report                string
	label                 string
	maxRSSPerMillion      float64
	quiet                 bool

	setupCert, setupKey string
}

func (a *app) benchSoakCommand() *cobra.Command {
	var o soakOptions
	cmd := &cobra.Command{
		Use:   "soak",
		Short: "Run a long mixed load against custodyd and judge its resource use",
		Long: `soak runs closed-loop workers that cycle through every crypto operation
(encrypt, decrypt, data keys in both envelope formats, with and without plaintext
and to a recipient, unwrap, rewrap, sign, verify, public key, MAC, the batch forms,
stored data keys, the REST gateway, and encrypts on a key whose budget is too small
for them) for --duration, and every --sample-every samples custodyd (--pid): its
resident memory, threads and open files from /proc, its goroutines and HSM
counters from --metrics-url, the size of --audit-dir, and the request and error
counts. It ends with the table of samples and a verdict: after the warm-up
(--warmup of the run: the Go heap's goal and the C allocator's arenas reach
their high-water marks over the first minutes, measured at ~1,000 requests a
second), resident memory must grow by less than --max-rss-per-million
MB per million requests, goroutines, threads and open files must not keep rising,
and no request may fail except the budgeted ones (RESOURCE_EXHAUSTED). The exit
status is 0 only when the verdict is PASS. make soak (softhsm-test/soak.sh) sets
up the vault and runs it.

Keys: PREFIX+"aes-"+i for i < --keys (encrypt, decrypt, datakey, unwrap, rewrap,
plaintext allowed, the recipient pinned), PREFIX+"p256-0" (sign, verify, public
key), PREFIX+"hmac-0" (mac) and PREFIX+"budget" (encrypt, with a small budget).
--setup creates any that are missing, as the operator of --setup-cert/--setup-key.`,
		Example: `  custodyctl bench soak --duration 10m --pid 4242 --metrics-url http://127.0.0.1:9090/metrics \
      --audit-dir /var/lib/custody/audit --gateway 127.0.0.1:8444 --recipient-pub relay-rsa.pub.pem`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runSoak(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.DurationVarP(&o.duration, "duration", "d", 10*time.Minute, "how long to run")
	f.DurationVar(&o.sampleEvery, "sample-every", 10*time.Second, "sampling interval")
	f.Float64Var(&o.warmup, "warmup", 0.4, "fraction of the run excluded from the verdict (0..0.8): the allocators settle first")
	f.IntVarP(&o.concurrency, "concurrency", "c", 8, "closed-loop workers")
	f.IntVar(&o.conns, "connections", 0, "gRPC connections shared by the workers (default one per 4 workers)")
	f.IntVar(&o.keys, "keys", 4, "AES keys the requests are spread over")
	f.StringVar(&o.keyPrefix, "key-prefix", "soak-", "prefix of the soak key names")
	f.StringVar(&o.recipientPub, "recipient-pub", "", "PEM RSA public key pinned as the relay's recipient (required)")
	f.StringVar(&o.gateway, "gateway", "", "REST gateway host:port (its calls are part of the mix; empty: none)")
	f.IntVar(&o.pid, "pid", 0, "custodyd's process id, sampled from /proc (required)")
	f.StringVar(&o.metricsURL, "metrics-url", "", "custodyd's Prometheus endpoint, e.g. http://127.0.0.1:9090/metrics (required)")
	f.StringVar(&o.auditDir, "audit-dir", "", "custodyd's audit directory, whose size is sampled (required)")
	f.StringVar(&o.report, "report", "", "also write the Markdown report to FILE")
	f.StringVar(&o.label, "label", "", "title of the report")
	f.Float64Var(&o.maxRSSPerMillion, "max-rss-per-million", 5, "verdict: largest resident memory growth after warm-up, MB per million requests")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "no progress lines on stderr")
	f.StringVar(&o.setupCert, "setup-cert", "", "operator certificate: create missing soak keys first")
	f.StringVar(&o.setupKey, "setup-key", "", "operator key for --setup-cert")
	return cmd
}

func (o *soakOptions) check() error {
	switch {
	case o.duration <= 0 || o.sampleEvery <= 0 || o.sampleEvery > o.duration:
		return usageErrorf("--duration and --sample-every must be positive, the sample interval no longer than the run")
	case o.warmup < 0 || o.warmup > 0.8:
		return usageErrorf("--warmup must be 0..0.8")
	case o.concurrency < 1 || o.concurrency > 1024:
		return usageErrorf("--concurrency must be 1..1024")
	case o.conns < 0 || o.conns > o.concurrency:
		return usageErrorf("--connections must be 1..--concurrency")
	case o.keys < 1 || o.keys > 1000:
		return usageErrorf("--keys must be 1..1000")
	case o.recipientPub == "" || o.pid <= 0 || o.metricsURL == "" || o.auditDir == "":
		return usageErrorf("--recipient-pub, --pid, --metrics-url and --audit-dir are required")
	case (o.setupCert == "") != (o.setupKey == ""):
		return usageErrorf("--setup-cert and --setup-key go together")
	}
	if o.conns == 0 {
		o.conns = (o.concurrency + 3) / 4
	}
	return nil
}

// soakContext is the encryption context of every soak request but the
// stored keys' (which vary it per id).
var soakContext = map[string]string{"tenant": "soak"}

// soakInputs are made before the clock starts, one set per AES key.
type soakInputs struct {
	payload      []byte
	recipientDER []byte
	aes          []string
	signKey      string
	macKey       string
	budget       string
	ct           [][]byte // Encrypt(payload)
	sealed       [][]byte // GenerateDataKey with plaintext (format 0x03 where the server has it)
	sealedKey    [][]byte
	kwp          [][]byte // GenerateDataKey without plaintext (format 0x02)
	kwpKey       [][]byte
	sig, macTag  []byte
}

// soakTally counts requests (one per RPC or REST call) and failures by
// operation and code. Budget refusals on the budgeted key are expected.
type soakTally struct {
	mu       sync.Mutex
	requests atomic.Uint64
	failures atomic.Uint64 // unexpected
	refused  atomic.Uint64 // expected RESOURCE_EXHAUSTED on the budgeted key
	byOp     map[string]*soakOpCount
	first    string
}

type soakOpCount struct {
	Requests uint64            `json:"requests"`
	Errors   map[string]uint64 `json:"errors,omitempty"`
}

func (t *soakTally) done(op string, err error, expected codes.Code) {
	t.requests.Add(1)
	code := status.Code(err)
	if err != nil && err == errSoakWrongAnswer {
		code = codes.DataLoss
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.byOp[op]
	if c == nil {
		c = &soakOpCount{Errors: map[string]uint64{}}
		t.byOp[op] = c
	}
	c.Requests++
	if err == nil {
		return
	}
	c.Errors[code.String()]++
	if expected != codes.OK && code == expected {
		t.refused.Add(1)
		return
	}
	t.failures.Add(1)
	if t.first == "" {
		t.first = op + ": " + oneLine(err.Error())
	}
}

var errSoakWrongAnswer = fmt.Errorf("answer differs from what was sent or prepared")

func (a *app) runSoak(ctx context.Context, o soakOptions) error {
	if err := o.check(); err != nil {
		return err
	}
	in, err := loadSoakInputs(o)
	if err != nil {
		return err
	}
	if o.setupCert != "" {
		bo := benchOptions{setupCert: o.setupCert, setupKey: o.setupKey}
		for _, set := range []struct {
			class benchKeyClass
			names []string
		}{{benchAES, append(append([]string(nil), in.aes...), in.budget)}, {benchP256, []string{in.signKey}}, {benchHMAC, []string{in.macKey}}} {
			if _, err := a.benchSetup(ctx, bo, set.class, set.names); err != nil {
				return err
			}
		}
	}
	conns, err := a.dialPool(o.conns)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	var rest *http.Client
	if o.gateway != "" {
		cfg, err := a.tlsConfig()
		if err != nil {
			return err
		}
		rest = &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: o.concurrency, ForceAttemptHTTP2: true}}
		defer rest.CloseIdleConnections()
	}
	if err := a.prepareSoak(ctx, custodyv1.NewCryptoServiceClient(conns[0]), in); err != nil {
		return err
	}

	tally := &soakTally{byOp: map[string]*soakOpCount{}}
	sampler := &soakSampler{pid: o.pid, metricsURL: o.metricsURL, auditDir: o.auditDir, tally: tally}
	res := &soakResult{Label: o.label, Concurrency: o.concurrency, Keys: o.keys, Gateway: o.gateway != "",
		Duration: o.duration.Seconds(), SampleEvery: o.sampleEvery.Seconds(), Warmup: o.warmup, MaxRSSPerMillion: o.maxRSSPerMillion,
		LoadStart: loadAverageText()}
	start := time.Now()
	if s, err := sampler.sample(ctx, start); err != nil {
		return localError(codes.FailedPrecondition, fmt.Errorf("cannot sample custodyd: %w", err))
	} else {
		res.Samples = append(res.Samples, s)
	}

	// The end of the run cancels the calls in flight (no deadline: a
	// deadline would reach the server and could come back as its error
	// before the client saw its own context end).
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopRun := time.AfterFunc(o.duration, cancel)
	defer stopRun.Stop()
	var hist latencyHist
	var histMu sync.Mutex
	var wg sync.WaitGroup
	for w := range o.concurrency {
		sw := &soakWorker{a: a, o: &o, in: in, tally: tally, c: custodyv1.NewCryptoServiceClient(conns[w%len(conns)]),
			dk: custodyv1.NewDataKeyServiceClient(conns[w%len(conns)]), rest: rest, id: w}
		wg.Go(func() {
			sw.run(runCtx)
			histMu.Lock()
			hist.merge(&sw.hist)
			histMu.Unlock()
		})
	}
	tick := time.NewTicker(o.sampleEvery)
sampling:
	for {
		select {
		case <-runCtx.Done():
			break sampling
		case <-tick.C:
			s, err := sampler.sample(ctx, start)
			if err != nil {
				cancel()
				wg.Wait()
				return localError(codes.Unavailable, fmt.Errorf("custodyd could not be sampled after %s: %w", time.Since(start).Round(time.Second), err))
			}
			res.Samples = append(res.Samples, s)
			if !o.quiet {
				fmt.Fprintf(a.stderr, "soak %5.0fs  %9d requests  RSS %6.1f MB  goroutines %4d  threads %3d  fds %3d  errors %d\n",
					s.Elapsed, s.Requests, s.RSSMB, s.Goroutines, s.Threads, s.FDs, s.Errors)
			}
		}
	}
	tick.Stop()
	wg.Wait()
	if s, err := sampler.sample(ctx, start); err == nil {
		res.Samples = append(res.Samples, s)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	res.LoadEnd = loadAverageText()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	res.Latency = benchLatency{P50: ms(hist.quantile(0.50)), P90: ms(hist.quantile(0.90)), P99: ms(hist.quantile(0.99)),
		Max: ms(time.Duration(hist.max)), Mean: ms(hist.mean())}
	tally.mu.Lock()
	res.Ops, res.FirstError = tally.byOp, tally.first
	tally.mu.Unlock()
	res.judge()

	var md bytes.Buffer
	writeSoakMarkdown(&md, res)
	if o.report != "" {
		if err := os.WriteFile(o.report, md.Bytes(), 0o644); err != nil {
			return localError(codes.FailedPrecondition, fmt.Errorf("write report: %w", err))
		}
	}
	if err := a.emitValue(res, func(w io.Writer) { _, _ = w.Write(md.Bytes()) }); err != nil {
		return err
	}
	if !res.Pass {
		return localError(codes.FailedPrecondition, fmt.Errorf("soak verdict: FAIL (%s)", strings.Join(res.Reasons, "; ")))
	}
	return nil
}

func loadSoakInputs(o soakOptions) (*soakInputs, error) {
	b, err := os.ReadFile(o.recipientPub)
	if err != nil {
		return nil, localError(codes.FailedPrecondition, fmt.Errorf("--recipient-pub: %w", err))
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("--recipient-pub %s holds no PEM block", o.recipientPub))
	}
	if _, err := x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("--recipient-pub: %w", err))
	}
	in := &soakInputs{payload: make([]byte, 32), recipientDER: blk.Bytes,
		aes: benchKeyNames(o.keyPrefix, benchAES, o.keys), signKey: o.keyPrefix + "p256-0", macKey: o.keyPrefix + "hmac-0", budget: o.keyPrefix + "budget"}
	if _, err := rand.Read(in.payload); err != nil {
		return nil, localError(codes.Internal, err)
	}
	return in, nil
}

// prepareSoak makes the ciphertexts, wrapped keys, signature and MAC the
// workers replay.
func (a *app) prepareSoak(ctx context.Context, c custodyv1.CryptoServiceClient, in *soakInputs) error {
	call := func(what, key string, f func(ctx context.Context) error) error {
		cctx, cancel := a.callCtx(ctx)
		defer cancel()
		if err := f(cctx); err != nil {
			return fmt.Errorf("prepare soak inputs: %s with key %q: %w", what, key, err)
		}
		return nil
	}
	for _, k := range in.aes {
		var ct, sealed, sealedKey, kwp, kwpKey []byte
		err := call("encrypt", k, func(ctx context.Context) error {
			r, err := c.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: k, Plaintext: in.payload, Context: soakContext})
			ct = r.GetCiphertext()
			return err
		})
		if err == nil {
			err = call("datakey", k, func(ctx context.Context) error {
				r, err := c.GenerateDataKey(ctx, &custodyv1.GenerateDataKeyRequest{KeyName: k, Context: soakContext})
				sealed, sealedKey = r.GetWrappedKey(), r.GetPlaintext()
				return err
			})
		}
		if err == nil {
			err = call("datakey without plaintext", k, func(ctx context.Context) error {
				r, err := c.GenerateDataKey(ctx, &custodyv1.GenerateDataKeyRequest{KeyName: k, Context: soakContext, WithoutPlaintext: true})
				kwp = r.GetWrappedKey()
				return err
			})
		}
		if err == nil {
			err = call("unwrap", k, func(ctx context.Context) error {
				r, err := c.Unwrap(ctx, &custodyv1.UnwrapRequest{KeyName: k, WrappedKey: kwp, Context: soakContext})
				kwpKey = r.GetPlaintext()
				return err
			})
		}
		if err != nil {
			return err
		}
		in.ct, in.sealed, in.sealedKey = append(in.ct, ct), append(in.sealed, sealed), append(in.sealedKey, sealedKey)
		in.kwp, in.kwpKey = append(in.kwp, kwp), append(in.kwpKey, kwpKey)
	}
	digest := sha256.Sum256(in.payload)
	err := call("sign", in.signKey, func(ctx context.Context) error {
		r, err := c.Sign(ctx, &custodyv1.SignRequest{KeyName: in.signKey, Input: &custodyv1.SignRequest_Digest{Digest: digest[:]}})
		in.sig = r.GetSignature()
		return err
	})
	if err != nil {
		return err
	}
	return call("mac", in.macKey, func(ctx context.Context) error {
		r, err := c.Mac(ctx, &custodyv1.MacRequest{KeyName: in.macKey, Data: in.payload})
		in.macTag = r.GetMac()
		return err
	})
}

// soakWorker is one closed-loop worker.
type soakWorker struct {
	a     *app
	o     *soakOptions
	in    *soakInputs
	tally *soakTally
	c     custodyv1.CryptoServiceClient
	dk    custodyv1.DataKeyServiceClient
	rest  *http.Client
	id    int
	n     uint64
	hist  latencyHist
}

// soakOps is the mix, run in this order by every worker (each starting at
// its own offset). One entry may make several requests.
var soakOps = []struct {
	name string
	run  func(w *soakWorker, ctx context.Context, k int)
}{
	{"encrypt", (*soakWorker).encrypt},
	{"decrypt", (*soakWorker).decrypt},
	{"datakey", (*soakWorker).datakey},
	{"unwrap", (*soakWorker).unwrap},
	{"datakey-kwp", (*soakWorker).datakeyKWP},
	{"unwrap-kwp", (*soakWorker).unwrapKWP},
	{"datakey-recipient", (*soakWorker).datakeyRecipient},
	{"unwrap-recipient", (*soakWorker).unwrapRecipient},
	{"rewrap", (*soakWorker).rewrap},
	{"batch", (*soakWorker).batches},
	{"sign", (*soakWorker).sign},
	{"mac", (*soakWorker).mac},
	{"stored", (*soakWorker).stored},
	{"rest", (*soakWorker).restCalls},
	{"budget", (*soakWorker).budgeted},
}

func (w *soakWorker) run(ctx context.Context) {
	for ; ctx.Err() == nil; w.n++ {
		i := (uint64(w.id)*7 + w.n) % uint64(len(soakOps))
		k := int((uint64(w.id) + w.n/uint64(len(soakOps))) % uint64(len(w.in.aes)))
		soakOps[i].run(w, ctx, k)
	}
}

// call makes one request and records it: its latency, and its error unless
// the run is over (a call cut off by the end of the run is not a failure).
func (w *soakWorker) call(ctx context.Context, op string, expected codes.Code, f func(ctx context.Context) error) error {
	cctx, cancel := w.a.callCtx(ctx)
	defer cancel()
	t0 := time.Now()
	err := f(cctx)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	w.hist.record(time.Since(t0))
	w.tally.done(op, err, expected)
	return err
}

func check(ok bool) error {
	if !ok {
		return errSoakWrongAnswer
	}
	return nil
}

func (w *soakWorker) encrypt(ctx context.Context, k int) {
	_ = w.call(ctx, "encrypt", codes.OK, func(ctx context.Context) error {
		_, err := w.c.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: w.in.aes[k], Plaintext: w.in.payload, Context: soakContext})
		return err
	})
}

func (w *soakWorker) decrypt(ctx context.Context, k int) {
	_ = w.call(ctx, "decrypt", codes.OK, func(ctx context.Context) error {
		r, err := w.c.Decrypt(ctx, &custodyv1.DecryptRequest{KeyName: w.in.aes[k], Ciphertext: w.in.ct[k], Context: soakContext})
		if err != nil {
			return err
		}
		return check(bytes.Equal(r.GetPlaintext(), w.in.payload))
	})
}

// datakey asks for a data key in plaintext and opens it again.
func (w *soakWorker) datakey(ctx context.Context, k int) {
	var wrapped, key []byte
	if w.call(ctx, "datakey", codes.OK, func(ctx context.Context) error {
		r, err := w.c.GenerateDataKey(ctx, &custodyv1.GenerateDataKeyRequest{KeyName: w.in.aes[k], Context: soakContext})
		wrapped, key = r.GetWrappedKey(), r.GetPlaintext()
		return err
	}) != nil {
		return
	}
	_ = w.call(ctx, "unwrap", codes.OK, func(ctx context.Context) error {
		r, err := w.c.Unwrap(ctx, &custodyv1.UnwrapRequest{KeyName: w.in.aes[k], WrappedKey: wrapped, Context: soakContext})
		if err != nil {
			return err
		}
		return check(bytes.Equal(r.GetPlaintext(), key))
	})
}

func (w *soakWorker) unwrap(ctx context.Context, k int) {
	_ = w.call(ctx, "unwrap", codes.OK, func(ctx context.Context) error {
		r, err := w.c.Unwrap(ctx, &custodyv1.UnwrapRequest{KeyName: w.in.aes[k], WrappedKey: w.in.sealed[k], Context: soakContext})
		if err != nil {
			return err
		}
		return check(bytes.Equal(r.GetPlaintext(), w.in.sealedKey[k]))
	})
}

func (w *soakWorker) datakeyKWP(ctx context.Context, k int) {
	_ = w.call(ctx, "datakey-without-plaintext", codes.OK, func(ctx context.Context) error {
		r, err := w.c.GenerateDataKey(ctx, &custodyv1.GenerateDataKeyRequest{KeyName: w.in.aes[k], Context: soakContext, WithoutPlaintext: true})
		if err != nil {
			return err
		}
		return check(len(r.GetPlaintext()) == 0 && len(r.GetWrappedKey()) > 0)
	})
}

func (w *soakWorker) unwrapKWP(ctx context.Context, k int) {
	_ = w.call(ctx, "unwrap-kwp", codes.OK, func(ctx context.Context) error {
		r, err := w.c.Unwrap(ctx, &custodyv1.UnwrapRequest{KeyName: w.in.aes[k], WrappedKey: w.in.kwp[k], Context: soakContext})
		if err != nil {
			return err
		}
		return check(bytes.Equal(r.GetPlaintext(), w.in.kwpKey[k]))
	})
}

func (w *soakWorker) datakeyRecipient(ctx context.Context, k int) {
	_ = w.call(ctx, "datakey-recipient", codes.OK, func(ctx context.Context) error {
		r, err := w.c.GenerateDataKey(ctx, &custodyv1.GenerateDataKeyRequest{KeyName: w.in.aes[k], Context: soakContext, RecipientPublicKey: w.in.recipientDER})
		if err != nil {
			return err
		}
		return check(len(r.GetPlaintext()) == 0 && len(r.GetRecipientWrappedKey()) > 0)
	})
}

// unwrapRecipient opens both prepared keys to the recipient.
func (w *soakWorker) unwrapRecipient(ctx context.Context, k int) {
	for _, wrapped := range [][]byte{w.in.sealed[k], w.in.kwp[k]} {
		_ = w.call(ctx, "unwrap-recipient", codes.OK, func(ctx context.Context) error {
			r, err := w.c.Unwrap(ctx, &custodyv1.UnwrapRequest{KeyName: w.in.aes[k], WrappedKey: wrapped, Context: soakContext, RecipientPublicKey: w.in.recipientDER})
			if err != nil {
				return err
			}
			return check(len(r.GetPlaintext()) == 0 && len(r.GetRecipientWrappedKey()) > 0)
		})
	}
}

func (w *soakWorker) rewrap(ctx context.Context, k int) {
	for _, wrapped := range [][]byte{w.in.sealed[k], w.in.kwp[k]} {
		_ = w.call(ctx, "rewrap", codes.OK, func(ctx context.Context) error {
			_, err := w.c.Rewrap(ctx, &custodyv1.RewrapRequest{KeyName: w.in.aes[k], WrappedKey: wrapped, Context: soakContext})
			return err
		})
	}
}

// batches makes one batch call of each kind, 8 items each.
func (w *soakWorker) batches(ctx context.Context, k int) {
	const n = 8
	nk := len(w.in.aes)
	_ = w.call(ctx, "batch-encrypt", codes.OK, func(ctx context.Context) error {
		items := make([]*custodyv1.EncryptRequest, n)
		for i := range items {
			items[i] = &custodyv1.EncryptRequest{KeyName: w.in.aes[(k+i)%nk], Plaintext: w.in.payload, Context: soakContext}
		}
		r, err := w.c.BatchEncrypt(ctx, &custodyv1.BatchEncryptRequest{Items: items})
		if err != nil {
			return err
		}
		return batchOK(len(r.GetResults()), n, func(i int) *custodyv1.ItemError { return r.GetResults()[i].GetError() })
	})
	_ = w.call(ctx, "batch-decrypt", codes.OK, func(ctx context.Context) error {
		items := make([]*custodyv1.DecryptRequest, n)
		for i := range items {
			items[i] = &custodyv1.DecryptRequest{KeyName: w.in.aes[(k+i)%nk], Ciphertext: w.in.ct[(k+i)%nk], Context: soakContext}
		}
		r, err := w.c.BatchDecrypt(ctx, &custodyv1.BatchDecryptRequest{Items: items})
		if err != nil {
			return err
		}
		return batchOK(len(r.GetResults()), n, func(i int) *custodyv1.ItemError { return r.GetResults()[i].GetError() })
	})
	_ = w.call(ctx, "batch-unwrap", codes.OK, func(ctx context.Context) error {
		items := make([]*custodyv1.UnwrapRequest, n)
		for i := range items {
			j := (k + i) % nk
			wrapped := w.in.sealed[j]
			if i%2 == 1 {
				wrapped = w.in.kwp[j]
			}
			items[i] = &custodyv1.UnwrapRequest{KeyName: w.in.aes[j], WrappedKey: wrapped, Context: soakContext}
		}
		r, err := w.c.BatchUnwrap(ctx, &custodyv1.BatchUnwrapRequest{Items: items})
		if err != nil {
			return err
		}
		return batchOK(len(r.GetResults()), n, func(i int) *custodyv1.ItemError { return r.GetResults()[i].GetError() })
	})
}

// batchOK turns the first failed item of a batch into the call's error.
func batchOK(got, want int, itemErr func(int) *custodyv1.ItemError) error {
	if got != want {
		return errSoakWrongAnswer
	}
	for i := range got {
		if e := itemErr(i); e != nil {
			return status.Error(codes.Code(e.GetCode()), e.GetMessage())
		}
	}
	return nil
}

func (w *soakWorker) sign(ctx context.Context, _ int) {
	digest := sha256.Sum256(w.in.payload)
	_ = w.call(ctx, "sign", codes.OK, func(ctx context.Context) error {
		_, err := w.c.Sign(ctx, &custodyv1.SignRequest{KeyName: w.in.signKey, Input: &custodyv1.SignRequest_Digest{Digest: digest[:]}})
		return err
	})
	_ = w.call(ctx, "verify", codes.OK, func(ctx context.Context) error {
		r, err := w.c.Verify(ctx, &custodyv1.VerifyRequest{KeyName: w.in.signKey, Input: &custodyv1.VerifyRequest_Digest{Digest: digest[:]}, Signature: w.in.sig})
		if err != nil {
			return err
		}
		return check(r.GetValid())
	})
	_ = w.call(ctx, "public-key", codes.OK, func(ctx context.Context) error {
		_, err := w.c.GetPublicKey(ctx, &custodyv1.GetPublicKeyRequest{KeyName: w.in.signKey})
		return err
	})
}

func (w *soakWorker) mac(ctx context.Context, _ int) {
	_ = w.call(ctx, "mac", codes.OK, func(ctx context.Context) error {
		_, err := w.c.Mac(ctx, &custodyv1.MacRequest{KeyName: w.in.macKey, Data: w.in.payload})
		return err
	})
	_ = w.call(ctx, "verify-mac", codes.OK, func(ctx context.Context) error {
		r, err := w.c.VerifyMac(ctx, &custodyv1.VerifyMacRequest{KeyName: w.in.macKey, Data: w.in.payload, Mac: w.in.macTag})
		if err != nil {
			return err
		}
		return check(r.GetValid())
	})
}

// stored keeps a data key under a fresh id, fetches it in plaintext and to
// the recipient, lists, and deletes it, so the store does not grow.
func (w *soakWorker) stored(ctx context.Context, k int) {
	key := w.in.aes[k]
	id := fmt.Sprintf("soak-%d-%d", w.id, w.n)
	encCtx := map[string]string{"tenant": "soak", "conversation": id}
	if w.call(ctx, "store", codes.OK, func(ctx context.Context) error {
		_, err := w.dk.StoreDataKey(ctx, &custodyv1.StoreDataKeyRequest{KeyName: key, Id: id, Context: encCtx,
			Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: true}})
		return err
	}) != nil {
		return
	}
	_ = w.call(ctx, "fetch", codes.OK, func(ctx context.Context) error {
		r, err := w.dk.FetchDataKey(ctx, &custodyv1.FetchDataKeyRequest{KeyName: key, Id: id, Context: encCtx})
		if err != nil {
			return err
		}
		return check(len(r.GetPlaintext()) == 32)
	})
	_ = w.call(ctx, "fetch-recipient", codes.OK, func(ctx context.Context) error {
		_, err := w.dk.FetchDataKey(ctx, &custodyv1.FetchDataKeyRequest{KeyName: key, Id: id, Context: encCtx, RecipientPublicKey: w.in.recipientDER})
		return err
	})
	if w.n%4 == 0 {
		_ = w.call(ctx, "list", codes.OK, func(ctx context.Context) error {
			_, err := w.dk.ListDataKeyIds(ctx, &custodyv1.ListDataKeyIdsRequest{KeyName: key, PageSize: 10})
			return err
		})
	}
	_ = w.call(ctx, "delete", codes.OK, func(ctx context.Context) error {
		_, err := w.dk.DeleteDataKey(ctx, &custodyv1.DeleteDataKeyRequest{KeyName: key, Id: id, Context: encCtx})
		return err
	})
}

// restCalls makes the same calls over the REST gateway: encrypt, decrypt,
// a data key and its unwrap.
func (w *soakWorker) restCalls(ctx context.Context, k int) {
	if w.rest == nil {
		return
	}
	key := w.in.aes[k]
	var enc custodyv1.EncryptResponse
	if w.call(ctx, "rest-encrypt", codes.OK, func(ctx context.Context) error {
		return w.post(ctx, "encrypt", &custodyv1.EncryptRequest{KeyName: key, Plaintext: w.in.payload, Context: soakContext}, &enc)
	}) != nil {
		return
	}
	_ = w.call(ctx, "rest-decrypt", codes.OK, func(ctx context.Context) error {
		var dec custodyv1.DecryptResponse
		if err := w.post(ctx, "decrypt", &custodyv1.DecryptRequest{KeyName: key, Ciphertext: enc.GetCiphertext(), Context: soakContext}, &dec); err != nil {
			return err
		}
		return check(bytes.Equal(dec.GetPlaintext(), w.in.payload))
	})
	var dk custodyv1.GenerateDataKeyResponse
	if w.call(ctx, "rest-datakey", codes.OK, func(ctx context.Context) error {
		return w.post(ctx, "generate-data-key", &custodyv1.GenerateDataKeyRequest{KeyName: key, Context: soakContext}, &dk)
	}) != nil {
		return
	}
	_ = w.call(ctx, "rest-unwrap", codes.OK, func(ctx context.Context) error {
		var un custodyv1.UnwrapResponse
		if err := w.post(ctx, "unwrap", &custodyv1.UnwrapRequest{KeyName: key, WrappedKey: dk.GetWrappedKey(), Context: soakContext}, &un); err != nil {
			return err
		}
		return check(bytes.Equal(un.GetPlaintext(), dk.GetPlaintext()))
	})
}

// post calls POST /v1/crypto/<call> on the gateway. A non-200 answer
// becomes the gRPC status it carries.
func (w *soakWorker) post(ctx context.Context, call string, req, resp proto.Message) error {
	body, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(req)
	if err != nil {
		return err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+w.o.gateway+"/v1/crypto/"+call, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/json")
	r, err := w.rest.Do(hr)
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	defer r.Body.Close()
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	if r.StatusCode != http.StatusOK {
		var st struct {
			Code    int32  `json:"code"`
			Message string `json:"message"`
		}
		_ = json.Unmarshal(b, &st)
		if st.Code == 0 {
			st.Code = int32(codes.Unknown)
		}
		return status.Error(codes.Code(st.Code), fmt.Sprintf("HTTP %d: %s", r.StatusCode, st.Message))
	}
	return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, resp)
}

// budgeted encrypts on the key whose budget the mix outruns: refusals
// (RESOURCE_EXHAUSTED) are expected and counted apart.
func (w *soakWorker) budgeted(ctx context.Context, _ int) {
	_ = w.call(ctx, "budgeted-encrypt", codes.ResourceExhausted, func(ctx context.Context) error {
		_, err := w.c.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: w.in.budget, Plaintext: w.in.payload, Context: soakContext})
		return err
	})
}

// soakOpNames returns the operations seen, sorted.
func soakOpNames(ops map[string]*soakOpCount) []string {
	names := make([]string, 0, len(ops))
	for n := range ops {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
