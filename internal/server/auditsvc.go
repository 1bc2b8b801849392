package server

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/names"
)

// ReportMethods are the methods the transparency report counts: every
// declared method (batch items included) that yields plaintext or a data key,
// opened from something sealed under a vault key or newly generated (see
// Methods).
func ReportMethods() []string {
	var out []string
	for _, m := range Methods {
		if m.Report != ReportNone {
			out = append(out, m.Name)
		}
	}
	return out
}

// AuditService implements custody.v1.AuditService over an open audit log.
// Who may call it is declared in Methods (auditors and officers; digests for
// auditors only) and decided by the server's interceptor, so it must be
// registered on a server that uses the interceptors (RegisterAuditService).
type AuditService struct {
	custodyv1.UnimplementedAuditServiceServer
	// Log is the audit log being read.
	Log *audit.Log
	// Signer is the HSM audit key (the one the log signs checkpoints with);
	// it signs transparency reports and its public half is served.
	Signer crypto.Signer
	// Digester computes context digests for DigestContext.
	Digester *keys.ContextDigester
}

// NewAuditService returns an AuditService over log that signs reports with
// signer. Register it with (*Server).RegisterAuditService.
func NewAuditService(log *audit.Log, signer crypto.Signer) *AuditService {
	return &AuditService{Log: log, Signer: signer}
}

// RegisterAuditService registers a on g, which must use this server's
// interceptors (ServerOptions): they decide who may call it. It shares the
// server's context digester.
func (s *Server) RegisterAuditService(g grpc.ServiceRegistrar, a *AuditService) {
	if a.Digester == nil {
		a.Digester = s.digester
	}
	custodyv1.RegisterAuditServiceServer(g, a)
}

// authorize fails closed when the service is reached without the server's
// interceptor (which puts the caller's declared method in ctx).
func (a *AuditService) authorize(ctx context.Context) error {
	if c := callFrom(ctx); c.m == nil || c.m.Service != svcAudit {
		return status.Error(codes.PermissionDenied, "audit service reached without the server's authorisation")
	}
	return nil
}

// errLimit stops a Read or Follow once the requested number of records has
// been sent; it never reaches the client.
var errLimit = errors.New("limit reached")

// Tail streams the records matching the request, following new ones if asked.
func (a *AuditService) Tail(req *custodyv1.TailRequest, stream grpc.ServerStreamingServer[custodyv1.AuditRecord]) error {
	ctx := stream.Context()
	if err := a.authorize(ctx); err != nil {
		return err
	}
	since, until, err := timeRange(req.GetSince(), req.GetUntil())
	if err != nil {
		return err
	}
	f := audit.Filter{
		Identity: req.GetIdentity(), Key: req.GetKey(), Method: req.GetMethod(),
		Since: since, Until: until, AfterSeq: req.GetAfterSeq(),
	}
	limit, sent := req.GetLimit(), uint64(0)
	send := func(r audit.Record) error {
		if err := stream.Send(RecordToProto(r)); err != nil {
			return err
		}
		sent++
		if limit > 0 && sent >= limit {
			return errLimit
		}
		return nil
	}
	if req.GetFollow() {
		err = a.Log.Follow(ctx, f, send)
	} else {
		err = a.Log.Read(ctx, f, send)
	}
	if errors.Is(err, errLimit) {
		return nil
	}
	return auditError(err)
}

// GetLatestCheckpoint returns the latest signed checkpoint, signing one of
// the current head first if asked to and the latest does not cover it.
func (a *AuditService) GetLatestCheckpoint(ctx context.Context, req *custodyv1.GetLatestCheckpointRequest) (*custodyv1.AuditCheckpoint, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	var cp audit.Checkpoint
	if req.GetCurrent() {
		var err error
		if cp, err = a.Log.Checkpoint(ctx); err != nil {
			return nil, auditError(err)
		}
	} else {
		var ok bool
		if cp, ok = a.Log.LatestCheckpoint(); !ok {
			return nil, status.Error(codes.NotFound, "no checkpoint has been signed yet")
		}
	}
	return CheckpointToProto(cp)
}

// GetAuditPublicKey returns the audit key's public half.
func (a *AuditService) GetAuditPublicKey(ctx context.Context, _ *custodyv1.GetAuditPublicKeyRequest) (*custodyv1.AuditPublicKey, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(a.Signer.Public())
	if err != nil {
		return nil, fmt.Errorf("audit public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return &custodyv1.AuditPublicKey{
		Der:    der,
		Pem:    string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})),
		Sha256: sum[:],
	}, nil
}

// Report verifies the whole log with the audit public key, then builds a
// transparency report of the window and signs it with the audit key. A log
// that does not verify gets no signed report (DATA_LOSS, naming the first
// bad record): the signature would otherwise lend it credibility.
func (a *AuditService) Report(ctx context.Context, req *custodyv1.ReportRequest) (*custodyv1.TransparencyReport, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	since, until, err := timeRange(req.GetSince(), req.GetUntil())
	if err != nil {
		return nil, err
	}
	all := ReportMethods()
	methods := req.GetMethods()
	if len(methods) == 0 {
		methods = all
	}
	for _, m := range methods {
		if !slices.Contains(all, m) {
			return nil, fmt.Errorf("%w: methods: %q is not a method the report counts (%s)", ErrInvalidArgument, names.Escape(m), strings.Join(all, ", "))
		}
	}
	counts := func(method string) bool {
		base, _, _ := strings.Cut(method, "[")
		return ReportClassOf(method) != ReportNone && slices.Contains(methods, base)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, err := audit.Verify(a.Log.Dir(), a.Signer.Public(), nil); err != nil {
		return nil, auditError(err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rep, err := audit.BuildReport(a.Log.Dir(), since, until, methods, counts)
	if err != nil {
		return nil, auditError(err)
	}
	if err := rep.SignReport(a.Signer); err != nil {
		return nil, status.Error(codes.Unavailable, "audit key could not sign the report")
	}
	b, err := json.Marshal(rep)
	if err != nil {
		return nil, fmt.Errorf("encode report: %w", err)
	}
	return &custodyv1.TransparencyReport{Json: b, Signature: rep.Signature}, nil
}

// DigestContext returns the keyed digest custodyd records for a context.
func (a *AuditService) DigestContext(ctx context.Context, req *custodyv1.DigestContextRequest) (*custodyv1.DigestContextResponse, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	if err := keys.ValidateContext(req.GetContext()); err != nil {
		return nil, err
	}
	if a.Digester == nil {
		return nil, status.Error(codes.Unavailable, "context digests are not configured")
	}
	d := a.Digester.Digest(req.GetContext())
	c := callFrom(ctx)
	c.ctxDigest = d
	c.detail = fmt.Sprintf("digest of a context of %d pairs", len(req.GetContext()))
	return &custodyv1.DigestContextResponse{Digest: d}, nil
}

// timeRange checks an optional [since, until) window.
func timeRange(since, until *timestamppb.Timestamp) (time.Time, time.Time, error) {
	var s, u time.Time
	if since != nil {
		if err := since.CheckValid(); err != nil {
			return s, u, fmt.Errorf("%w: since: %v", ErrInvalidArgument, err)
		}
		s = since.AsTime()
	}
	if until != nil {
		if err := until.CheckValid(); err != nil {
			return s, u, fmt.Errorf("%w: until: %v", ErrInvalidArgument, err)
		}
		u = until.AsTime()
	}
	if !s.IsZero() && !u.IsZero() && !s.Before(u) {
		return s, u, fmt.Errorf("%w: since must be before until", ErrInvalidArgument)
	}
	return s, u, nil
}

// auditError gives the audit package's errors their gRPC codes. Context
// errors pass through to the interceptor's mapping.
func auditError(err error) error {
	var ve *audit.VerifyError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.As(err, &ve):
		// Names a sequence number, a file and a kind of damage: no secrets.
		return status.Error(codes.DataLoss, ve.Error())
	case errors.Is(err, audit.ErrCorrupt):
		return status.Error(codes.DataLoss, "audit log is corrupt")
	case errors.Is(err, audit.ErrUnavailable), errors.Is(err, audit.ErrClosed):
		return status.Error(codes.Unavailable, "audit log unavailable")
	case errors.Is(err, audit.ErrNoRecords):
		return status.Error(codes.FailedPrecondition, "audit log has no records yet")
	}
	return err
}

// RecordToProto converts a log record to its API form, field for field.
func RecordToProto(r audit.Record) *custodyv1.AuditRecord {
	return &custodyv1.AuditRecord{
		Format: uint32(r.Format), Seq: r.Seq, Time: timestamppb.New(r.Time), Identity: r.Identity,
		Role: r.Role, Method: r.Method, Key: r.Key, KeyVersion: r.KeyVersion,
		ContextDigest: r.ContextDigest, Outcome: string(r.Outcome), Code: r.Code, CaseRef: r.CaseRef,
		Detail: r.Detail, PrevHash: r.PrevHash, Hash: r.Hash, Replica: r.Replica,
	}
}

// CheckpointToProto converts a checkpoint to its API form, including the
// log's own JSON line of it (what `custodyctl audit verify --anchor` reads).
func CheckpointToProto(cp audit.Checkpoint) (*custodyv1.AuditCheckpoint, error) {
	b, err := json.Marshal(cp)
	if err != nil {
		return nil, fmt.Errorf("encode checkpoint: %w", err)
	}
	return &custodyv1.AuditCheckpoint{
		Seq: cp.Seq, HeadHash: cp.Head, Time: timestamppb.New(cp.Time), Instance: cp.InstanceID,
		Signature: cp.Signature, Json: b,
	}, nil
}
