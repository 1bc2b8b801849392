package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Why this file exists: with TLS 1.3 the client finishes its handshake
// before custodyd has checked the client certificate. When custodyd refuses
// the certificate, all the client sees is an alert on its first read, or
// just a broken pipe, and gRPC reports UNAVAILABLE, the code for an outage
// that a retry may cure. A certificate from the wrong CA is no outage:
// Diagnostics tells the two apart and reports the refusal as
// UNAUTHENTICATED with its cause, which is never retried.

// ErrCertificateRefused matches (errors.Is) a refusal of the client
// certificate reported by Diagnostics.Explain.
var ErrCertificateRefused = errors.New("custodyd did not accept this client certificate")

// Diagnostics watches the TLS handshakes of one connection to custodyd:
// which certificate authorities custodyd asked for, and which certificate
// chain this client presented. Make one with NewDiagnostics; it is safe for
// concurrent use. Client uses one itself; it is exported for programs that
// dial custodyd with grpc directly (custodyctl does).
type Diagnostics struct {
	mu         sync.Mutex
	acceptable [][]byte // DER names in custodyd's last CertificateRequest
	asked      bool
	chain      []*x509.Certificate // as presented; [0] is the leaf
}

// NewDiagnostics returns a copy of cfg that records each handshake's
// certificate request, and the Diagnostics that reads it. cfg must hold the
// client certificate in Certificates[0] (as tls.LoadX509KeyPair gives it).
func NewDiagnostics(cfg *tls.Config) (*tls.Config, *Diagnostics) {
	d := &Diagnostics{}
	out := cfg.Clone()
	if len(cfg.Certificates) == 0 {
		return out, d
	}
	pair := cfg.Certificates[0]
	for _, der := range pair.Certificate {
		if c, err := x509.ParseCertificate(der); err == nil {
			d.chain = append(d.chain, c)
		}
	}
	out.Certificates = nil
	out.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		d.mu.Lock()
		d.asked, d.acceptable = true, cri.AcceptableCAs
		d.mu.Unlock()
		return &pair, nil // always present it: custodyd decides
	}
	return out, d
}

// tlsRefusalAlerts are the alerts a TLS server sends when it does not
// accept a client certificate, as Go's crypto/tls words them.
var tlsRefusalAlerts = []string{
	"remote error: tls: unknown certificate authority",
	"remote error: tls: bad certificate",
	"remote error: tls: certificate required",
	"remote error: tls: expired certificate",
	"remote error: tls: revoked certificate",
	"remote error: tls: unsupported certificate",
	"remote error: tls: certificate unknown",
	"remote error: tls: access denied",
}

// closedAfterHandshake are how a refusal looks when the alert was lost:
// custodyd closed the connection right after the handshake.
var closedAfterHandshake = []string{"broken pipe", "connection reset by peer", "error reading server preface: EOF"}

// Explain returns err unchanged unless it is custodyd refusing this
// client's certificate; that it reports as an UNAUTHENTICATED status
// matching ErrCertificateRefused, with the cause where it can be known:
// "custodyd did not accept this client certificate: issued by X, custodyd
// trusts Y". Only UNAVAILABLE errors are examined.
func (d *Diagnostics) Explain(err error) error {
	if d == nil || err == nil || status.Code(err) != codes.Unavailable {
		return err
	}
	msg := status.Convert(err).Message()
	alert := ""
	for _, a := range tlsRefusalAlerts {
		if strings.Contains(msg, a) {
			alert = strings.TrimPrefix(a, "remote error: ")
		}
	}
	d.mu.Lock()
	asked, acceptable, chain := d.asked, d.acceptable, d.chain
	d.mu.Unlock()
	mismatch := asked && len(acceptable) > 0 && len(chain) > 0 && !chainMeets(chain, acceptable)
	if alert == "" && !(mismatch && containsAny(msg, closedAfterHandshake)) {
		return err
	}
	var why []string
	if len(chain) > 0 {
		leaf := chain[0]
		why = append(why, fmt.Sprintf("issued by %q", leaf.Issuer.String()))
		if len(acceptable) > 0 {
			names := make([]string, len(acceptable))
			for i, a := range acceptable {
				names[i] = fmt.Sprintf("%q", dnString(a))
			}
			trusts := "custodyd trusts " + strings.Join(names, " or ")
			if !mismatch && alert == "tls: unknown certificate authority" {
				trusts += " (a CA of that name, but not the one that issued this certificate)"
			}
			why = append(why, trusts)
		}
		now := time.Now()
		if now.After(leaf.NotAfter) {
			why = append(why, "the certificate expired at "+leaf.NotAfter.UTC().Format(time.RFC3339))
		} else if now.Before(leaf.NotBefore) {
			why = append(why, "the certificate is not valid before "+leaf.NotBefore.UTC().Format(time.RFC3339))
		}
	}
	if alert != "" {
		why = append(why, alert)
	}
	return &refusalError{st: status.New(codes.Unauthenticated, fmt.Sprintf("%v: %s", ErrCertificateRefused, strings.Join(why, ", ")))}
}

// refusalError is an UNAUTHENTICATED status that also matches
// ErrCertificateRefused.
type refusalError struct{ st *status.Status }

func (e *refusalError) Error() string              { return e.st.Message() }
func (e *refusalError) GRPCStatus() *status.Status { return e.st }
func (e *refusalError) Is(target error) bool       { return target == ErrCertificateRefused }

// chainMeets reports whether some certificate of chain was issued by, or
// is, one of the acceptable CAs (compared by DER name, as TLS lists them).
func chainMeets(chain []*x509.Certificate, acceptable [][]byte) bool {
	for _, c := range chain {
		for _, a := range acceptable {
			if bytes.Equal(c.RawIssuer, a) || bytes.Equal(c.RawSubject, a) {
				return true
			}
		}
	}
	return false
}

func dnString(der []byte) string {
	var rdn pkix.RDNSequence
	if rest, err := asn1.Unmarshal(der, &rdn); err != nil || len(rest) > 0 {
		return fmt.Sprintf("(unparsable name, %d bytes)", len(der))
	}
	var n pkix.Name
	n.FillFromRDNSequence(&rdn)
	return n.String()
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// WaitReady waits until conn is ready or ctx is done, and then returns why
// it never became ready: the last connection error (a refused port, an
// unreachable host, a certificate custodyd refused) as well as ctx's error.
func (d *Diagnostics) WaitReady(ctx context.Context, conn *grpc.ClientConn) error {
	conn.Connect()
	var last error
	for {
		s := conn.GetState()
		switch s {
		case connectivity.Ready:
			return nil
		case connectivity.TransientFailure:
			// gRPC keeps the reason of the last failed attempt; a call that
			// does not wait for readiness fails at once with it, without
			// reaching the network.
			_, err := healthpb.NewHealthClient(conn).Check(withoutRetries(ctx), &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
			last = d.Explain(err) // as the retry policy would, if conn does not use it
			switch {
			case errors.Is(last, ErrCertificateRefused):
				return last // waiting longer will not change custodyd's mind
			case status.Code(last) != codes.Unavailable:
				last = nil // it answered: ready, or about to be
			}
		}
		if !conn.WaitForStateChange(ctx, s) {
			if last != nil {
				return fmt.Errorf("connect to custodyd at %s: %w (gave up: %w)", conn.Target(), last, ctx.Err())
			}
			return fmt.Errorf("connect to custodyd at %s (last state %s): %w", conn.Target(), s, ctx.Err())
		}
	}
}

type noRetryKey struct{}

// withoutRetries marks a call the retry policy must not repeat.
func withoutRetries(ctx context.Context) context.Context {
	return context.WithValue(ctx, noRetryKey{}, true)
}

func retriesDisabled(ctx context.Context) bool {
	v, _ := ctx.Value(noRetryKey{}).(bool)
	return v
}
