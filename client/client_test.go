package client

// These tests exercise the client's own connection, retry, deadline and
// budget handling against a real gRPC server with mutual TLS whose
// handlers return scripted statuses. They test this package's loop, not
// Custody: end-to-end tests against custodyd are in e2e_test.go.

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// scripted answers Encrypt and RotateKey with whatever its handler says,
// counting the calls that reached it.
type scripted struct {
	custodyv1.UnimplementedCryptoServiceServer
	custodyv1.UnimplementedKeyServiceServer
	calls   atomic.Int32
	handler func(ctx context.Context, call int32) error
}

func (s *scripted) Encrypt(ctx context.Context, _ *custodyv1.EncryptRequest) (*custodyv1.EncryptResponse, error) {
	if err := s.handler(ctx, s.calls.Add(1)); err != nil {
		return nil, err
	}
	return &custodyv1.EncryptResponse{Ciphertext: []byte("ct"), KeyVersion: 1}, nil
}

func (s *scripted) RotateKey(ctx context.Context, _ *custodyv1.RotateKeyRequest) (*custodyv1.Key, error) {
	if err := s.handler(ctx, s.calls.Add(1)); err != nil {
		return nil, err
	}
	return &custodyv1.Key{Name: "k"}, nil
}

// startScripted starts a scripted server and dials it with cfg adjusted by
// tweak.
func startScripted(t *testing.T, handler func(ctx context.Context, call int32) error, tweak func(*Config)) (*Client, *scripted) {
	t.Helper()
	p := newTestPKI(t)
	s := &scripted{handler: handler}
	addr := p.serveTLS(t, 0, func(srv *grpc.Server) {
		custodyv1.RegisterCryptoServiceServer(srv, s)
		custodyv1.RegisterKeyServiceServer(srv, s)
	})
	cfg := p.config(addr)
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, s
}

func TestRetriesUnavailableUntilTheServerAnswers(t *testing.T) {
	c, s := startScripted(t, func(_ context.Context, call int32) error {
		if call <= 2 {
			return status.Error(codes.Unavailable, "audit log not writable")
		}
		return nil
	}, nil)
	ct, err := c.Encrypt(context.Background(), "k", []byte("x"), nil)
	if err != nil {
		t.Fatalf("encrypt after two UNAVAILABLE: %v", err)
	}
	if string(ct) != "ct" {
		t.Fatalf("ciphertext = %q", ct)
	}
	if n := s.calls.Load(); n != 3 {
		t.Fatalf("server saw %d calls, want 3 (two refused, one answered)", n)
	}
}

func TestNeverRetriesAnyCodeButUnavailable(t *testing.T) {
	for _, code := range []codes.Code{
		codes.Unknown, codes.InvalidArgument, codes.DeadlineExceeded, codes.NotFound,
		codes.AlreadyExists, codes.PermissionDenied, codes.ResourceExhausted,
		codes.FailedPrecondition, codes.Aborted, codes.Internal, codes.DataLoss, codes.Unauthenticated,
	} {
		t.Run(code.String(), func(t *testing.T) {
			c, s := startScripted(t, func(context.Context, int32) error {
				return status.Error(code, "refused")
			}, nil)
			_, err := c.Encrypt(context.Background(), "k", []byte("x"), nil)
			if got := status.Code(err); got != code {
				t.Fatalf("code = %v, want %v (err %v)", got, code, err)
			}
			if n := s.calls.Load(); n != 1 {
				t.Fatalf("server saw %d calls for %v, want 1", n, code)
			}
		})
	}
}

func TestRetriesStopAtMaxAttempts(t *testing.T) {
	c, s := startScripted(t, func(context.Context, int32) error {
		return status.Error(codes.Unavailable, "down")
	}, func(cfg *Config) { cfg.MaxAttempts = 3 })
	_, err := c.Encrypt(context.Background(), "k", []byte("x"), nil)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want UNAVAILABLE", err)
	}
	if n := s.calls.Load(); n != 3 {
		t.Fatalf("server saw %d calls, want exactly MaxAttempts = 3", n)
	}
}

func TestRetriesStopAtTheCallersDeadline(t *testing.T) {
	c, s := startScripted(t, func(context.Context, int32) error {
		return status.Error(codes.Unavailable, "down")
	}, func(cfg *Config) {
		cfg.MaxAttempts = 1000
		cfg.InitialBackoff = 40 * time.Millisecond
		cfg.MaxBackoff = 40 * time.Millisecond
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Encrypt(ctx, "k", []byte("x"), nil)
	elapsed := time.Since(start)
	if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want UNAVAILABLE or DEADLINE_EXCEEDED", err)
	}
	if elapsed > time.Second {
		t.Fatalf("retrying took %v past a 300ms deadline", elapsed)
	}
	if n := s.calls.Load(); n < 2 || n > 20 {
		t.Fatalf("server saw %d calls in 300ms with 20-40ms backoff; want a few retries, bounded by the deadline", n)
	}
}

func TestRotateKeyIsNeverRetried(t *testing.T) {
	c, s := startScripted(t, func(context.Context, int32) error {
		return status.Error(codes.Unavailable, "down")
	}, nil)
	_, err := c.Keys().RotateKey(context.Background(), &custodyv1.RotateKeyRequest{Name: "k"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want UNAVAILABLE", err)
	}
	if n := s.calls.Load(); n != 1 {
		t.Fatalf("RotateKey reached the server %d times; a repeat could add a second version", n)
	}
}

// slow blocks until the call's context ends (or 10s pass).
func slow(ctx context.Context, _ int32) error {
	select {
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	case <-time.After(10 * time.Second):
		return nil
	}
}

func TestConfigTimeoutBoundsEveryCall(t *testing.T) {
	c, _ := startScripted(t, slow, func(cfg *Config) { cfg.Timeout = 200 * time.Millisecond })
	start := time.Now()
	_, err := c.Encrypt(context.Background(), "k", []byte("x"), nil)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want DEADLINE_EXCEEDED", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a 200ms Timeout returned after %v", d)
	}
}

func TestCallersEarlierDeadlineWinsOverConfigTimeout(t *testing.T) {
	c, s := startScripted(t, slow, func(cfg *Config) { cfg.Timeout = time.Minute })
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Encrypt(ctx, "k", []byte("x"), nil)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want DEADLINE_EXCEEDED", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a 150ms caller deadline returned after %v", d)
	}
	if n := s.calls.Load(); n != 1 {
		t.Fatalf("deadline exceeded was retried: %d calls", n)
	}
}

func TestBudgetErrorCarriesRetryInfoFromStatusDetails(t *testing.T) {
	c, s := startScripted(t, func(ctx context.Context, _ int32) error {
		// A trailer hint too: the status detail must win.
		if err := grpc.SetTrailer(ctx, metadata.Pairs("retry-after", "9")); err != nil {
			return err
		}
		st, err := status.New(codes.ResourceExhausted, "rate budget for relay on key k spent").
			WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)})
		if err != nil {
			return err
		}
		return st.Err()
	}, nil)
	_, err := c.Encrypt(context.Background(), "k", []byte("x"), nil)
	var be *BudgetError
	if !errors.As(err, &be) {
		t.Fatalf("err = %T %v, want *BudgetError", err, err)
	}
	if be.RetryAfter != 1500*time.Millisecond {
		t.Fatalf("RetryAfter = %v, want 1.5s", be.RetryAfter)
	}
	if !errors.Is(err, ErrBudgetExhausted) || status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("budget error is not ErrBudgetExhausted / RESOURCE_EXHAUSTED: %v", err)
	}
	if n := s.calls.Load(); n != 1 {
		t.Fatalf("budget refusal was retried: %d calls", n)
	}
}

func TestBudgetErrorReadsRetryAfterFromTrailerOrHeader(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(ctx context.Context) error
		want time.Duration
	}{
		{"trailer seconds", func(ctx context.Context) error {
			return grpc.SetTrailer(ctx, metadata.Pairs("retry-after", "3"))
		}, 3 * time.Second},
		{"header duration", func(ctx context.Context) error {
			return grpc.SetHeader(ctx, metadata.Pairs("retry-after", "250ms"))
		}, 250 * time.Millisecond},
		{"no hint", func(context.Context) error { return nil }, 0},
		{"garbage hint", func(ctx context.Context) error {
			return grpc.SetTrailer(ctx, metadata.Pairs("retry-after", "soon"))
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := startScripted(t, func(ctx context.Context, _ int32) error {
				if err := tc.set(ctx); err != nil {
					return err
				}
				return status.Error(codes.ResourceExhausted, "volume budget spent")
			}, nil)
			_, err := c.Encrypt(context.Background(), "k", []byte("x"), nil)
			var be *BudgetError
			if !errors.As(err, &be) {
				t.Fatalf("err = %T %v, want *BudgetError", err, err)
			}
			if be.RetryAfter != tc.want {
				t.Fatalf("RetryAfter = %v, want %v", be.RetryAfter, tc.want)
			}
		})
	}
}

func TestParseRetryAfterAcceptsHTTPAndGoForms(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"7":                             7 * time.Second,
		"0.5":                           500 * time.Millisecond,
		"2m":                            2 * time.Minute,
		"Fri, 02 Jan 2026 03:04:15 GMT": 10 * time.Second,
	} {
		got, ok := parseRetryAfter(in, now)
		if !ok || got != want {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "-1", "-2s", "later", "1e12"} {
		if got, ok := parseRetryAfter(in, now); ok {
			t.Errorf("parseRetryAfter(%q) = %v, accepted; want refused", in, got)
		}
	}
}

func TestDialRequiresAllMutualTLSFiles(t *testing.T) {
	p := newTestPKI(t)
	full := p.config("127.0.0.1:1")
	for name, cfg := range map[string]Config{
		"no addr":      {CAFile: full.CAFile, CertFile: full.CertFile, KeyFile: full.KeyFile},
		"no CA":        {Addr: full.Addr, CertFile: full.CertFile, KeyFile: full.KeyFile},
		"no cert":      {Addr: full.Addr, CAFile: full.CAFile, KeyFile: full.KeyFile},
		"no key":       {Addr: full.Addr, CAFile: full.CAFile, CertFile: full.CertFile},
		"CA not PEM":   {Addr: full.Addr, CAFile: full.KeyFile + ".missing", CertFile: full.CertFile, KeyFile: full.KeyFile},
		"key mismatch": {Addr: full.Addr, CAFile: full.CAFile, CertFile: full.CertFile, KeyFile: p.serverKey},
	} {
		if c, err := Dial(context.Background(), cfg); !errors.Is(err, ErrConfig) {
			if c != nil {
				_ = c.Close()
			}
			t.Errorf("%s: err = %v, want %v", name, err, ErrConfig)
		}
	}
}

func TestDialErrorsDoNotContainKeyMaterial(t *testing.T) {
	p := newTestPKI(t)
	cfg := p.config("127.0.0.1:1")
	cfg.CertFile = p.serverKey // a key where the certificate should be
	_, err := Dial(context.Background(), cfg)
	if err == nil {
		t.Fatal("dialled with a key file as certificate")
	}
	key, rerr := os.ReadFile(p.serverKey)
	if rerr != nil {
		t.Fatal(rerr)
	}
	for _, line := range strings.Split(string(key), "\n") {
		if len(line) > 20 && strings.Contains(err.Error(), line) {
			t.Fatalf("error quotes key file contents: %v", err)
		}
	}
}

func TestDialRefusesServerWithoutTLS13(t *testing.T) {
	p := newTestPKI(t)
	s := &scripted{handler: func(context.Context, int32) error { return nil }}
	addr := p.serveTLS(t, tls.VersionTLS12, func(srv *grpc.Server) { custodyv1.RegisterCryptoServiceServer(srv, s) })
	cfg := p.config(addr)
	cfg.MaxAttempts = 1
	c, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Encrypt(ctx, "k", []byte("x"), nil); err == nil {
		t.Fatal("call succeeded over TLS 1.2")
	}
	if n := s.calls.Load(); n != 0 {
		t.Fatalf("a TLS 1.2 server received %d calls", n)
	}
}

func TestDialBlockFailsForServerFromAnotherCA(t *testing.T) {
	server, relay := newTestPKI(t), newTestPKI(t)
	addr := server.serveTLS(t, 0, func(srv *grpc.Server) {
		custodyv1.RegisterCryptoServiceServer(srv, &scripted{})
	})
	cfg := relay.config(addr) // trusts relay's CA, not the server's
	cfg.Block = true
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err == nil {
		_ = c.Close()
		t.Fatal("Block dial succeeded to a server whose CA is not trusted")
	}
}

func TestDialBlockSucceedsWithTrustedServer(t *testing.T) {
	p := newTestPKI(t)
	addr := p.serveTLS(t, 0, func(srv *grpc.Server) {
		custodyv1.RegisterCryptoServiceServer(srv, &scripted{})
	})
	cfg := p.config(addr)
	cfg.Block = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Block dial to a trusted server: %v", err)
	}
	_ = c.Close()
}

func TestClosedClientRefusesWork(t *testing.T) {
	c, s := startScripted(t, func(context.Context, int32) error { return nil }, nil)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Seal(context.Background(), "k", []byte("x"), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Seal after Close: err = %v, want %v", err, ErrClosed)
	}
	if _, err := c.Encrypt(context.Background(), "k", []byte("x"), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Encrypt after Close: err = %v, want %v", err, ErrClosed)
	}
	if n := s.calls.Load(); n != 0 {
		t.Fatalf("closed client reached the server %d times", n)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestReservedConversationContextKeyIsRefusedLocally(t *testing.T) {
	c, _ := startScripted(t, func(context.Context, int32) error { return nil }, nil)
	encCtx := map[string]string{ConversationContextKey: "c1"}
	if _, err := c.Seal(context.Background(), "k", []byte("x"), encCtx); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Seal with reserved context key: err = %v, want %v", err, ErrInvalidArgument)
	}
	if _, err := c.SealerFor(context.Background(), "k", "c1", encCtx); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("SealerFor with reserved context key: err = %v, want %v", err, ErrInvalidArgument)
	}
	if _, err := c.SealerFor(context.Background(), "k", "", nil); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("SealerFor with empty conversation: err = %v, want %v", err, ErrInvalidArgument)
	}
	if _, err := c.Open(context.Background(), "", []byte{1}, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Open with empty key name: err = %v, want %v", err, ErrInvalidArgument)
	}
}
