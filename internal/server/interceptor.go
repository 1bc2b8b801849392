package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/gateway"
	"github.com/custodyhq/custody/internal/governance"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/policy"
)

// ErrUnauthenticated: the caller presented no verified client certificate,
// or one from which no identity can be derived.
var ErrUnauthenticated = errors.New("no verified client certificate")

// errNoRole: the caller's identity has no role.
var errNoRole = errors.New("identity has no role")

// errRoleRefused: the caller's role may not call the method at all.
var errRoleRefused = errors.New("role may not call this method")

// errUnknownMethod: a method custodyd does not declare.
var errUnknownMethod = errors.New("unknown method")

// call is what one request records about itself for the audit log. The
// interceptor fills the caller and its declaration; handlers add the key,
// version, context digest and detail as they learn them.
type call struct {
	m         *Method
	snap      *governance.Snapshot
	identity  string
	spki      string // hex SHA-256 of the caller's SubjectPublicKeyInfo
	role      policy.Role
	method    string // the audited name: m.Name, or "<m.Name>[i]" for a batch item
	key       string
	version   uint32
	ctxDigest []byte
	caseRef   string
	detail    string
	release   func() // admission slot (admission.go); nil when none was taken
}

type callKey struct{}

// callFrom returns the request's record; handlers always run under the
// interceptor, so it is never nil there.
func callFrom(ctx context.Context) *call {
	if c, ok := ctx.Value(callKey{}).(*call); ok {
		return c
	}
	return &call{}
}

// actor is the caller as governance sees it.
func (c *call) actor() governance.Actor { return governance.Actor{Identity: c.identity, Role: c.role} }

// caller identifies the peer from its verified client certificate. A
// request from the REST gateway arrives on its in-process connection with
// the identity the gateway verified from the HTTP client's certificate; that
// forwarded identity is believed only there, and a request carrying one on
// any other connection is refused (see package gateway).
func caller(ctx context.Context) (string, error) {
	c, err := callerCert(ctx)
	return c.Identity, err
}

// callerCert is caller with the certificate's public key (grants may pin
// it) and the CAs its verified chains end at (the ceremony fixes which are
// trusted).
func callerCert(ctx context.Context) (gateway.Cert, error) {
	if c, forwarded, err := gateway.ForwardedCert(ctx); err != nil {
		return gateway.Cert{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	} else if forwarded {
		return c, nil
	}
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return gateway.Cert{}, ErrUnauthenticated
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return gateway.Cert{}, ErrUnauthenticated
	}
	var leaf *x509.Certificate = ti.State.VerifiedChains[0][0]
	id, err := pki.Identity(leaf)
	if err != nil {
		return gateway.Cert{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	return gateway.Cert{Identity: id, SPKI: pki.SPKIHash(leaf), Roots: pki.ChainRoots(ti.State.VerifiedChains)}, nil
}

// errUntrustedCA: the certificate verified against the CA file, but only
// through CAs that the key ceremony did not fix (appended to the file
// since, or removed by a set-trust proposal).
var errUntrustedCA = errors.New("the client certificate chains only to CAs the key ceremony does not trust")

func shortFingerprints(fps []string) string {
	out := make([]string, len(fps))
	for i, fp := range fps {
		out[i] = "sha256:" + fp
	}
	return strings.Join(out, ",")
}

// isHealth reports whether a method is the standard health service, which
// any mTLS-authenticated peer (load balancers, probes) may call unaudited.
func isHealth(full string) bool { return strings.HasPrefix(full, "/grpc.health.v1.Health/") }

// begin identifies the caller and checks its role against the method's
// declaration. The returned context carries the call record even when the
// request is refused, so the refusal is audited with what is known.
func (s *Server) begin(ctx context.Context, full string) (context.Context, *call, error) {
	c := &call{method: "unknown"}
	ctx = context.WithValue(ctx, callKey{}, c)
	m, ok := lookup(full)
	if ok {
		c.m, c.method = m, m.Name
	}
	cert, err := callerCert(ctx)
	if err != nil {
		c.identity = "unauthenticated"
		return ctx, c, err
	}
	id := cert.Identity
	c.identity, c.spki = id, cert.SPKI
	if !ok {
		return ctx, c, fmt.Errorf("%w: %s", errUnknownMethod, shortMethod(full))
	}
	c.snap = s.gov.Snapshot()
	if !c.snap.TrustsCA(cert.Roots) {
		return ctx, c, fmt.Errorf("%w: %w (%s)", ErrUnauthenticated, errUntrustedCA, shortFingerprints(cert.Roots))
	}
	role, ok := c.snap.Role(id)
	if !ok {
		return ctx, c, fmt.Errorf("%w: %s", errNoRole, id)
	}
	c.role = role
	if !m.Allows(role) {
		return ctx, c, fmt.Errorf("%w: role %q cannot call %s", errRoleRefused, role, m.Name)
	}
	// Admission (admission.go): the caller's in-flight cap and memory
	// headroom; a refusal is audited by finish like any denial.
	if err := s.admit(c); err != nil {
		return ctx, c, err
	}
	return ctx, c, nil
}

func shortMethod(full string) string {
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[i+1:]
	}
	return full
}

// finish audits the request and converts its error to a status. If the
// audit record cannot be made durable, the request fails with UNAVAILABLE
// whatever its outcome: nothing is answered off the record.
func (s *Server) finish(ctx context.Context, c *call, err error, start time.Time) error {
	if c.release != nil { // admission slot, held until the record is durable
		defer c.release()
	}
	st := toStatus(err, s.log)
	if _, aerr := s.audit.Append(context.WithoutCancel(ctx), s.record(c, st)); aerr != nil {
		s.log.Error("audit append failed; refusing request", "method", c.method, "err", aerr)
		st = status.New(codes.Unavailable, "audit log unavailable: request refused")
	}
	s.metrics.observe(c.method, st.Code(), time.Since(start))
	return st.Err()
}

// record builds the audit record of a finished request. The audit log fits
// over-long or invalid fields itself: content never stops a record.
func (s *Server) record(c *call, st *status.Status) audit.Record {
	outcome := audit.OutcomeOK
	switch {
	case st.Code() == codes.OK:
	case isDenial(st.Code()):
		outcome = audit.OutcomeDenied
	default:
		outcome = audit.OutcomeError
	}
	detail := c.detail
	if st.Code() != codes.OK {
		if detail == "" {
			detail = st.Message()
		} else {
			detail += ": " + st.Message()
		}
	}
	return audit.Record{
		Time: s.now(), Identity: c.identity, Role: string(c.role), Method: c.method,
		Key: c.key, KeyVersion: uint64(c.version), ContextDigest: c.ctxDigest,
		Outcome: outcome, Code: st.Code().String(), CaseRef: c.caseRef, Detail: detail,
	}
}

func isDenial(c codes.Code) bool {
	return c == codes.PermissionDenied || c == codes.Unauthenticated || c == codes.ResourceExhausted
}

// intent writes a durable record of the state change the request is about
// to make (audit, then act). A handler calls it right before the change; if
// it fails, the handler changes nothing and the request fails UNAVAILABLE.
func (s *Server) intent(ctx context.Context, what string) error {
	c := callFrom(ctx)
	rec := audit.Record{
		Time: s.now(), Identity: c.identity, Role: string(c.role), Method: c.method, Key: c.key,
		KeyVersion: uint64(c.version), ContextDigest: c.ctxDigest, Outcome: audit.OutcomeIntent, Code: "-", Detail: what,
	}
	if _, err := s.audit.Append(context.WithoutCancel(ctx), rec); err != nil {
		return fmt.Errorf("%w: %w", errAuditUnavailable, err)
	}
	return nil
}

// errAuditUnavailable: a record could not be made durable.
var errAuditUnavailable = errors.New("audit log unavailable")

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if isHealth(info.FullMethod) {
		derr := decodeError(req)
		if _, err := caller(ctx); err != nil {
			return nil, toStatus(err, s.log).Err()
		}
		if derr != nil {
			return nil, toStatus(derr, s.log).Err()
		}
		return handler(ctx, req)
	}
	start := time.Now()
	ctx, c, err := s.begin(ctx, info.FullMethod)
	if derr := decodeError(req); err == nil && derr != nil {
		err = derr
	}
	var resp any
	if err == nil {
		resp, err = handler(ctx, req)
	}
	if serr := s.finish(ctx, c, err, start); serr != nil {
		return nil, serr
	}
	return resp, nil
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if isHealth(info.FullMethod) {
		if _, err := caller(ss.Context()); err != nil {
			return toStatus(err, s.log).Err()
		}
		return handler(srv, &wrappedStream{ServerStream: ss, ctx: ss.Context()})
	}
	start := time.Now()
	ctx, c, err := s.begin(ss.Context(), info.FullMethod)
	if err == nil {
		err = handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
	}
	return s.finish(ctx, c, err, start)
}

// wrappedStream carries the call record and surfaces requests that did not
// decode (see tolerantCodec).
type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

func (w *wrappedStream) RecvMsg(m any) error {
	if err := w.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return decodeError(m)
}
