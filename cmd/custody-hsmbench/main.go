// Command custody-hsmbench measures the raw rate of one cryptographic
// operation through package hsm on a PKCS#11 token, with no gRPC, TLS,
// authorisation or audit in the way. `custodyctl bench --baseline` runs it on
// custodyd's own token to print the vault/raw ratio; custodyctl itself never
// links the HSM layer.
//
//	custody-hsmbench --uri 'pkcs11:token=custody-dev?module-path=/usr/lib/softhsm/libsofthsm2.so' \
//	    --pin-file .custody-dev/pin --op decrypt --concurrency 8 --duration 3s
//
// It prints one JSON line: {"op", "concurrency", "payload_bytes",
// "duration_seconds", "ops", "errors", "ops_per_sec", "p50_ms", "p99_ms"}.
//
// Invariants: it never touches a key it did not make. It generates one
// temporary key of the kind the operation needs (label
// "custody-hsmbench-<random>", the same enforced, non-extractable template
// custodyd uses), and destroys it before exiting, also when interrupted. The
// PIN is read from a file only and never printed.
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/custodyhq/custody/hsm"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// ops lists the operations, named as in `custodyctl bench --op`.
// datakey and unwrap are the sealed path custodyd takes for a data key
// returned in plaintext (envelope 0x03: RNG + AES-GCM, no key object);
// datakey-kwp and unwrap-kwp the AES-KWP path it keeps for keys that must
// stay in the token (envelope 0x02: one session object per call).
var ops = []string{"encrypt", "decrypt", "datakey", "unwrap", "datakey-kwp", "unwrap-kwp", "sign", "mac"}

// result is the JSON line printed.
type result struct {
	Op          string  `json:"op"`
	Concurrency int     `json:"concurrency"`
	Payload     int     `json:"payload_bytes"`
	Seconds     float64 `json:"duration_seconds"`
	Ops         uint64  `json:"ops"`
	Errors      uint64  `json:"errors"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	P50         float64 `json:"p50_ms"`
	P99         float64 `json:"p99_ms"`
}

// options are the command-line flags.
type options struct {
	uri, pinFile, op  string
	concurrency       int
	duration          time.Duration
	payload, sessions int
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("custody-hsmbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.StringVar(&o.uri, "uri", "", "PKCS#11 URI of the token (pkcs11:token=...?module-path=...)")
	fs.StringVar(&o.pinFile, "pin-file", "", "file holding the token's user PIN")
	fs.StringVar(&o.op, "op", "decrypt", "operation: "+strings.Join(ops, "|"))
	fs.IntVar(&o.concurrency, "concurrency", 8, "goroutines calling the token")
	fs.DurationVar(&o.duration, "duration", 3*time.Second, "how long to measure")
	fs.IntVar(&o.payload, "payload", 32, "plaintext / data size in bytes")
	fs.IntVar(&o.sessions, "sessions", 0, "PKCS#11 session pool size (default: one per goroutine, at least 32)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := o.check(fs.NArg()); err != nil {
		fmt.Fprintf(stderr, "custody-hsmbench: %v\n", err)
		return 2
	}
	res, err := bench(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "custody-hsmbench: %v\n", err)
		return 1
	}
	b, _ := json.Marshal(res)
	fmt.Fprintf(stdout, "%s\n", b)
	return 0
}

func (o *options) check(nargs int) error {
	switch {
	case nargs > 0:
		return errors.New("unexpected arguments")
	case o.uri == "":
		return errors.New("--uri is required")
	case o.pinFile == "":
		return errors.New("--pin-file is required (the PIN is never taken on the command line)")
	case !slices.Contains(ops, o.op):
		return fmt.Errorf("--op must be one of %s, not %q", strings.Join(ops, "|"), o.op)
	case o.concurrency < 1 || o.concurrency > 1024:
		return errors.New("--concurrency must be 1..1024")
	case o.duration <= 0:
		return errors.New("--duration must be positive")
	case o.payload < 0 || o.payload > 1<<20:
		return errors.New("--payload must be 0..1048576")
	}
	if o.sessions == 0 {
		o.sessions = max(o.concurrency, 32)
	}
	return nil
}

// readPIN reads the PIN file, trimmed of surrounding white space. Errors
// name the file, never its content.
func readPIN(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pin file: %w", err)
	}
	pin := []byte(strings.TrimSpace(string(b)))
	clear(b)
	if len(pin) == 0 {
		return nil, fmt.Errorf("pin file %s is empty", path)
	}
	return pin, nil
}

// kindFor is the key kind the operation needs, matching what custodyd uses
// for the same vault operation.
func kindFor(op string) hsm.Kind {
	switch op {
	case "sign":
		return hsm.KindECDSAP256
	case "mac":
		return hsm.KindHMACSHA256
	}
	return hsm.KindAES256
}

// opFunc is one call to the token.
type opFunc func(ctx context.Context) error

func bench(ctx context.Context, o options) (*result, error) {
	pin, err := readPIN(o.pinFile)
	if err != nil {
		return nil, err
	}
	m, err := hsm.Open(ctx, hsm.Config{
		URI: o.uri, PIN: pin, MaxSessions: o.sessions,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	clear(pin)
	if err != nil {
		return nil, fmt.Errorf("open token: %w", err)
	}
	defer m.Close()

	suffix := make([]byte, 8)
	_, _ = rand.Read(suffix)
	label := "custody-hsmbench-" + hex.EncodeToString(suffix)
	k, _, err := m.CreateKey(ctx, kindFor(o.op), label)
	if err != nil {
		return nil, fmt.Errorf("create temporary key: %w", err)
	}
	defer func() {
		// Destroy even when ctx was cancelled (interrupt): a fresh context.
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = m.Destroy(dctx, k)
	}()

	call, err := prepare(ctx, m, k, o)
	if err != nil {
		return nil, err
	}
	res := measure(ctx, o, call)
	if res.Ops == 0 {
		return nil, fmt.Errorf("no %s operation succeeded (%d errors)", o.op, res.Errors)
	}
	return res, nil
}

func prepare(ctx context.Context, m *hsm.Module, k hsm.Key, o options) (opFunc, error) {
	payload := make([]byte, o.payload)
	_, _ = rand.Read(payload)
	// The same AAD length as custodyctl bench's context, roughly: the cost
	// of GCM over a short AAD is what the vault pays too.
	aad := []byte("tenant=bench")
	switch o.op {
	case "encrypt":
		return func(ctx context.Context) error { _, _, err := m.Encrypt(ctx, k, payload, aad); return err }, nil
	case "decrypt":
		iv, ct, err := m.Encrypt(ctx, k, payload, aad)
		if err != nil {
			return nil, fmt.Errorf("prepare ciphertext: %w", err)
		}
		return func(ctx context.Context) error {
			pt, err := m.Decrypt(ctx, k, iv, ct, aad)
			clear(pt)
			return err
		}, nil
	case "datakey":
		return func(ctx context.Context) error {
			pt, _, _, err := m.GenerateSealedDataKey(ctx, k, aad)
			clear(pt)
			return err
		}, nil
	case "unwrap":
		_, iv, sealed, err := m.GenerateSealedDataKey(ctx, k, aad)
		if err != nil {
			return nil, fmt.Errorf("prepare sealed key: %w", err)
		}
		return func(ctx context.Context) error {
			pt, err := m.OpenSealedDataKey(ctx, k, iv, sealed, aad)
			clear(pt)
			return err
		}, nil
	case "datakey-kwp":
		return func(ctx context.Context) error {
			_, pt, err := m.GenerateDataKey(ctx, k, true)
			clear(pt)
			return err
		}, nil
	case "unwrap-kwp":
		w, _, err := m.GenerateDataKey(ctx, k, false)
		if err != nil {
			return nil, fmt.Errorf("prepare wrapped key: %w", err)
		}
		return func(ctx context.Context) error {
			pt, err := m.UnwrapDataKey(ctx, k, w)
			clear(pt)
			return err
		}, nil
	case "sign":
		digest := sha256.Sum256(payload)
		return func(ctx context.Context) error { _, err := m.Sign(ctx, k, digest[:]); return err }, nil
	case "mac":
		return func(ctx context.Context) error { _, err := m.MAC(ctx, k, payload); return err }, nil
	}
	return nil, fmt.Errorf("unknown operation %q", o.op)
}

// measure runs closed-loop goroutines for o.duration and summarises them.
// Latencies are kept as samples (a few MB for a long run at SoftHSM speeds)
// and sorted once at the end.
func measure(ctx context.Context, o options, call opFunc) *result {
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		mu      sync.Mutex
		samples []time.Duration
		ok, bad uint64
	)
	start := time.Now()
	timer := time.AfterFunc(o.duration, func() { stop.Store(true) })
	defer timer.Stop()
	for range o.concurrency {
		wg.Go(func() {
			var mine []time.Duration
			var myOK, myBad uint64
			for !stop.Load() && ctx.Err() == nil {
				t0 := time.Now()
				err := call(ctx)
				mine = append(mine, time.Since(t0))
				if err != nil {
					myBad++
				} else {
					myOK++
				}
			}
			mu.Lock()
			samples = append(samples, mine...)
			ok += myOK
			bad += myBad
			mu.Unlock()
		})
	}
	wg.Wait()
	el := time.Since(start)
	slices.Sort(samples)
	q := func(f float64) float64 {
		if len(samples) == 0 {
			return 0
		}
		i := min(int(f*float64(len(samples))), len(samples)-1)
		return float64(samples[i].Microseconds()) / 1000
	}
	return &result{
		Op: o.op, Concurrency: o.concurrency, Payload: o.payload, Seconds: el.Seconds(),
		Ops: ok, Errors: bad, OpsPerSec: float64(ok) / el.Seconds(), P50: q(0.50), P99: q(0.99),
	}
}
