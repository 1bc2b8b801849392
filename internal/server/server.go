// Package server implements Custody's gRPC services over the HSM, the key
// registry, governance's access snapshot and the audit log.
//
// Invariants:
//   - Every RPC is declared once, in Methods: the roles that may call it,
//     its policy operation, whether a disclosure order may authorise it, its
//     budget cost, how it is audited and what the transparency report counts
//     it as. The interceptor refuses any method not declared and any caller
//     whose role the declaration does not list, before a handler runs.
//   - Every request that reaches the server — allowed, denied, malformed or
//     failed — is written to the audit log before it is answered, and a
//     request whose record cannot be made durable fails with UNAVAILABLE
//     (fail closed). A state change is made only after an intent record for
//     it is durable (audit, then act).
//   - Key operations are decided per key by the access snapshot governance
//     publishes (one atomic load per request) before the HSM or the key
//     registry is touched, so an ungranted caller learns nothing about which
//     keys exist. The server holds no governance state.
//   - Errors become gRPC status codes in exactly one place (status.go).
//   - No handler returns key material of a key in custody; the only key
//     bytes that ever leave are data keys, and only where the caller's grant
//     (or a disclosure order) allows it.
package server

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/admission"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/governance"
	"github.com/custodyhq/custody/internal/keys"
)

// Auditor is where request records go. *audit.Log implements it.
type Auditor interface {
	Append(ctx context.Context, rec audit.Record) (uint64, error)
}

// Options wires a Server.
type Options struct {
	HSM  *hsm.Module
	Keys *keys.Registry
	// Gov is the vault's governance: the access snapshot, budgets, orders.
	Gov *governance.Governance
	// Audit receives every request record (required).
	Audit Auditor
	// Digester computes the keyed context digests that records carry.
	Digester *keys.ContextDigester
	Metrics  *Metrics // nil: no metrics
	Logger   *slog.Logger
	Now      func() time.Time
	Limits   Limits
	// Admission caps each identity's requests in flight and refuses new
	// work under memory pressure (admission.go); nil admits everything.
	Admission *admission.Limiter
	// Anchor, if set, makes the store's current revision durable where
	// root on the host cannot roll it back (the HSM token's audit mark)
	// before an officer's approval or veto is answered: an acknowledged
	// governance change cannot then be undone by a crash and an older
	// copy of the store put back.
	Anchor func(context.Context) error
}

// Limits bound request sizes.
type Limits struct {
	MaxPayload         int           // plaintext bytes for Encrypt (default 64 KiB)
	MaxBatch           int           // items per batch call (default 100)
	MaxPageSize        int           // ListKeys page size (default 100)
	DestroyWaitDefault time.Duration // ScheduleKeyDestruction default (7 days)
}

// Server implements custody.v1's services.
type Server struct {
	custodyv1.UnimplementedKeyServiceServer
	custodyv1.UnimplementedCryptoServiceServer

	hsm      *hsm.Module
	keys     *keys.Registry
	gov      *governance.Governance
	audit    Auditor
	digester *keys.ContextDigester
	metrics  *Metrics
	log      *slog.Logger
	now      func() time.Time
	limits   Limits
	health   *health.Server

	dataKeys atomic.Pointer[dataKeyStore] // stored data keys (datakeys.go); nil until SetDataKeyStore

	admission *admission.Limiter // nil: no admission control

	auditMark atomic.Pointer[func() *custodyv1.AuditMarkStatus] // statussvc.go; nil until SetAuditMarkStatus

	anchor func(context.Context) error // Options.Anchor
}

// New builds a Server from its dependencies.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Limits.MaxPayload <= 0 {
		o.Limits.MaxPayload = keys.MaxPlaintextLen
	}
	if o.Limits.MaxBatch <= 0 {
		o.Limits.MaxBatch = 100
	}
	if o.Limits.MaxPageSize <= 0 {
		o.Limits.MaxPageSize = 100
	}
	if o.Limits.DestroyWaitDefault <= 0 {
		o.Limits.DestroyWaitDefault = 7 * 24 * time.Hour
	}
	return &Server{
		hsm: o.HSM, keys: o.Keys, gov: o.Gov, audit: o.Audit, digester: o.Digester, metrics: o.Metrics,
		log: o.Logger, now: o.Now, limits: o.Limits, health: health.NewServer(),
		admission: o.Admission, anchor: o.Anchor,
	}
}

// Register adds the services to a gRPC server (or to a daemon's late
// binding of one: see internal/daemon, sealed start).
func (s *Server) Register(g grpc.ServiceRegistrar) {
	custodyv1.RegisterKeyServiceServer(g, s)
	custodyv1.RegisterCryptoServiceServer(g, s)
	custodyv1.RegisterGovernanceServiceServer(g, governanceService{s: s})
	custodyv1.RegisterDataKeyServiceServer(g, dataKeyService{s: s})
	custodyv1.RegisterStatusServiceServer(g, statusService{s: s})
	healthpb.RegisterHealthServer(g, s.health)
}

// Health is the standard health service, for the daemon to set serving state.
func (s *Server) Health() *health.Server { return s.health }

// Interceptors are the interceptors ServerOptions installs, for a daemon
// that builds its gRPC server before the Server exists (sealed start) and
// chains them in once the vault is unsealed.
func (s *Server) Interceptors() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	return s.unaryInterceptor, s.streamInterceptor
}

// ServerOptions returns the interceptors every custody gRPC server must use.
func (s *Server) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(tolerantCodec{}),
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
	}
}
