package client

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/testenv"
)

// foreignRelay is a client certificate from "client test CA", a CA the
// vault does not trust, with the vault's CA to verify custodyd.
func foreignRelay(t *testing.T, e *testenv.Env) Config {
	other := newTestPKI(t)
	return Config{Addr: e.Addr, CAFile: e.CAFile, CertFile: other.clientCert, KeyFile: other.clientKey, ServerName: "localhost",
		InitialBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
}

func TestCertificateFromAnotherCAIsUnauthenticatedWithItsCause(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	c, err := Dial(context.Background(), foreignRelay(t, e))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Several calls: whichever way the refusal shows on the wire (an alert,
	// or a broken pipe once the connection is gone), it reads the same.
	for i := range 3 {
		_, err = c.Encrypt(context.Background(), "demo", []byte("x"), nil)
		if status.Code(err) != codes.Unauthenticated || !errors.Is(err, ErrCertificateRefused) {
			t.Fatalf("call %d: %v, want UNAUTHENTICATED matching ErrCertificateRefused", i, err)
		}
		msg := status.Convert(err).Message()
		for _, want := range []string{"custodyd did not accept this client certificate", `issued by "CN=client test CA"`,
			`custodyd trusts "CN=Custody dev CA,O=Custody dev"`} {
			if !strings.Contains(msg, want) {
				t.Errorf("call %d: %q lacks %q", i, msg, want)
			}
		}
	}
}

// TestRefusedCertificateIsNeverRetried counts the attempts the retry policy
// makes, on a real connection to a real custodyd.
func TestRefusedCertificateIsNeverRetried(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	cfg := foreignRelay(t, e).withDefaults()
	tc, err := cfg.tlsConfig()
	if err != nil {
		t.Fatal(err)
	}
	tc, diag := NewDiagnostics(tc)
	p := retryPolicy{timeout: 30 * time.Second, maxAttempts: 4, initial: time.Millisecond, max: 5 * time.Millisecond, diag: diag}
	var attempts atomic.Int32
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		attempts.Add(1)
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	conn, err := grpc.NewClient(e.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)), grpc.WithChainUnaryInterceptor(p.unary, count))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = custodyv1.NewCryptoServiceClient(conn).Encrypt(context.Background(), &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("x")})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("err = %v, want UNAUTHENTICATED", err)
	}
	if n := attempts.Load(); n != 1 {
		t.Fatalf("%d attempts for a refused certificate, want 1", n)
	}
	// An outage is still retried: the same policy against a closed port.
	attempts.Store(0)
	closed := closedPort(t)
	conn2, err := grpc.NewClient(closed, grpc.WithTransportCredentials(credentials.NewTLS(tc)), grpc.WithChainUnaryInterceptor(p.unary, count))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	_, err = custodyv1.NewCryptoServiceClient(conn2).Encrypt(context.Background(), &custodyv1.EncryptRequest{KeyName: "demo"})
	if status.Code(err) != codes.Unavailable || attempts.Load() != 4 {
		t.Fatalf("closed port: %v after %d attempts, want UNAVAILABLE after 4", err, attempts.Load())
	}
}

func TestDialBlockReportsARefusedCertificateAtOnce(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	cfg := foreignRelay(t, e)
	cfg.Block = true
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err == nil {
		c.Close()
		t.Fatal("Block dial with a certificate from another CA succeeded")
	}
	if status.Code(err) != codes.Unauthenticated || !errors.Is(err, ErrCertificateRefused) || ctx.Err() != nil {
		t.Fatalf("Dial: %v (ctx %v); want the refusal, before the deadline", err, ctx.Err())
	}
}

func TestDialBlockToAWrongPortKeepsTheCause(t *testing.T) {
	p := newTestPKI(t)
	cfg := p.config(closedPort(t))
	cfg.Block = true
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err == nil {
		c.Close()
		t.Fatal("Block dial to a closed port succeeded")
	}
	if !strings.Contains(err.Error(), "connection refused") || !errors.Is(err, context.DeadlineExceeded) ||
		status.Code(err) != codes.Unavailable {
		t.Fatalf("Dial: %v; want the refused connection, UNAVAILABLE, and the deadline", err)
	}
}

// closedPort returns a 127.0.0.1 address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func TestExplainLeavesOtherErrorsAlone(t *testing.T) {
	d := &Diagnostics{}
	for _, err := range []error{
		nil,
		status.Error(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused\""),
		status.Error(codes.Unavailable, "write: broken pipe"), // no evidence of a refusal: an outage
		status.Error(codes.PermissionDenied, "remote error: tls: bad certificate"),
		errors.New("remote error: tls: bad certificate"),
	} {
		if got := d.Explain(err); got != err {
			t.Errorf("Explain(%v) = %v, want it unchanged", err, got)
		}
	}
	var nilDiag *Diagnostics
	if err := status.Error(codes.Unavailable, "remote error: tls: bad certificate"); nilDiag.Explain(err) != err {
		t.Error("a nil Diagnostics changed an error")
	}
	if got := d.Explain(status.Error(codes.Unavailable, "error reading server preface: remote error: tls: expired certificate")); status.Code(got) != codes.Unauthenticated ||
		!strings.Contains(got.Error(), "tls: expired certificate") {
		t.Errorf("an expired-certificate alert: %v", got)
	}
}
